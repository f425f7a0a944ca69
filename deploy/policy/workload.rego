# Helpers for the rules in this folder (conftest style: package main, one Kubernetes object as input).
# Run them on RENDERED overlays: the base leaves image tags to the overlays.
#   kubectl kustomize deploy/overlays/dev | conftest test --policy deploy/policy -
package main

import rego.v1

workload_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

pod_spec := input.spec.template.spec if input.kind in workload_kinds

pod_spec := input.spec.jobTemplate.spec.template.spec if input.kind == "CronJob"

pod_spec := input.spec if input.kind == "Pod"

# Every container of the pod, init containers included.
containers contains c if some c in pod_spec.containers

containers contains c if some c in pod_spec.initContainers

object_name := sprintf("%s/%s", [input.kind, input.metadata.name])

annotation(key) := object.get(input, ["metadata", "annotations", key], "")

sync_wave := annotation("argocd.argoproj.io/sync-wave")
