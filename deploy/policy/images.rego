# Images are immutable references: a tag (not latest) or a digest. The base leaves the tag to the
# overlay's `images:` entry, so these rules hold on rendered overlays only.
package main

import rego.v1

# The tag of an image reference, or "" (a registry host may carry a port, so look after the last /).
image_tag(image) := tag if {
	parts := split(image, "/")
	last := parts[count(parts) - 1]
	contains(last, ":")
	tag := split(last, ":")[1]
} else := ""

has_digest(image) if contains(image, "@sha256:")

deny contains msg if {
	some c in containers
	not has_digest(c.image)
	image_tag(c.image) == ""
	msg := sprintf("[image-tag] %s: container %q uses image %q without a tag or digest", [object_name, c.name, c.image])
}

deny contains msg if {
	some c in containers
	not has_digest(c.image)
	image_tag(c.image) == "latest"
	msg := sprintf("[image-latest] %s: container %q uses the mutable tag latest (%q)", [object_name, c.name, c.image])
}
