# Every container states what it needs and what it may use: requests and limits for CPU and memory.
package main

import rego.v1

deny contains msg if {
	some c in containers
	some resource in ["cpu", "memory"]
	not c.resources.requests[resource]
	msg := sprintf("[resources-requests] %s: container %q has no %s request", [object_name, c.name, resource])
}

deny contains msg if {
	some c in containers
	some resource in ["cpu", "memory"]
	not c.resources.limits[resource]
	msg := sprintf("[resources-limits] %s: container %q has no %s limit", [object_name, c.name, resource])
}
