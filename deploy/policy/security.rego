# The restricted Pod Security Standard, checked per container: non-root, read-only root filesystem,
# no privilege escalation, no capabilities, a seccomp profile (pod or container level).
package main

import rego.v1

# A container setting wins over the pod's.
effective(c, key) := c.securityContext[key]

effective(c, key) := pod_spec.securityContext[key] if not has_key(object.get(c, "securityContext", {}), key)

has_key(obj, key) if _ = obj[key]

deny contains msg if {
	some c in containers
	not effective(c, "runAsNonRoot") == true
	msg := sprintf("[run-as-non-root] %s: container %q may run as root (set runAsNonRoot: true)", [object_name, c.name])
}

deny contains msg if {
	some c in containers
	not c.securityContext.readOnlyRootFilesystem == true
	msg := sprintf("[read-only-root-filesystem] %s: container %q has a writable root filesystem", [object_name, c.name])
}

deny contains msg if {
	some c in containers
	not c.securityContext.allowPrivilegeEscalation == false
	msg := sprintf("[no-privilege-escalation] %s: container %q allows privilege escalation", [object_name, c.name])
}

deny contains msg if {
	some c in containers
	not "ALL" in object.get(c, ["securityContext", "capabilities", "drop"], [])
	msg := sprintf("[drop-all-capabilities] %s: container %q does not drop ALL capabilities", [object_name, c.name])
}

deny contains msg if {
	some c in containers
	not effective(c, "seccompProfile").type in {"RuntimeDefault", "Localhost"}
	msg := sprintf("[seccomp] %s: container %q has no RuntimeDefault (or Localhost) seccomp profile", [object_name, c.name])
}
