# A Deployment's containers tell Kubernetes when to send traffic and when to restart them.
package main

import rego.v1

deny contains msg if {
	input.kind == "Deployment"
	some c in pod_spec.containers
	not c.readinessProbe
	msg := sprintf("[probe-readiness] %s: container %q has no readinessProbe", [object_name, c.name])
}

deny contains msg if {
	input.kind == "Deployment"
	some c in pod_spec.containers
	not c.livenessProbe
	msg := sprintf("[probe-liveness] %s: container %q has no livenessProbe", [object_name, c.name])
}
