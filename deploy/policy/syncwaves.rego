# ArgoCD order inside the Application: SealedSecrets (wave 2: the JWT key, the runtime role's
# password) are decrypted before the database (wave 3: the CNPG Cluster, or pgo's PostgresCluster with
# components/pgo), which is healthy before the migration Job
# (a Sync hook in wave 4: PreSync would run before the Cluster exists on a first install), and the
# schema is migrated before the Deployment (wave 5) rolls out.
package main

import rego.v1

is_migration_job if {
	input.kind == "Job"
	object.get(input, ["metadata", "labels", "app.kubernetes.io/component"], "") == "migration"
}

is_migration_job if {
	input.kind == "Job"
	endswith(input.metadata.name, "-migrate")
}

deny contains msg if {
	input.kind == "SealedSecret"
	sync_wave != "2"
	msg := sprintf("[wave-sealed-secret] %s: sync-wave must be \"2\" (got %q), before the Cluster, the migration and the server", [object_name, sync_wave])
}

is_database_cluster if {
	input.kind == "Cluster"
	startswith(input.apiVersion, "postgresql.cnpg.io/")
}

is_database_cluster if {
	input.kind == "PostgresCluster"
	startswith(input.apiVersion, "postgres-operator.crunchydata.com/")
}

deny contains msg if {
	is_database_cluster
	sync_wave != "3"
	msg := sprintf("[wave-database] %s: sync-wave must be \"3\" (got %q)", [object_name, sync_wave])
}

deny contains msg if {
	is_migration_job
	sync_wave != "4"
	msg := sprintf("[wave-migration] %s: sync-wave must be \"4\" (got %q)", [object_name, sync_wave])
}

deny contains msg if {
	is_migration_job
	annotation("argocd.argoproj.io/hook") != "Sync"
	msg := sprintf("[migration-sync-hook] %s: must be an ArgoCD Sync hook (got %q)", [object_name, annotation("argocd.argoproj.io/hook")])
}

deny contains msg if {
	is_migration_job
	policies := {trim_space(p) | some p in split(annotation("argocd.argoproj.io/hook-delete-policy"), ",")}
	not "BeforeHookCreation" in policies
	msg := sprintf("[migration-hook-delete-policy] %s: hook-delete-policy must include BeforeHookCreation (a fixed name is re-created on every sync)", [object_name])
}

deny contains msg if {
	input.kind == "Job"
	_ = input.spec.ttlSecondsAfterFinished
	msg := sprintf("[job-no-ttl] %s: ttlSecondsAfterFinished deletes the Job behind ArgoCD's back", [object_name])
}

deny contains msg if {
	input.kind == "Deployment"
	sync_wave != "5"
	msg := sprintf("[wave-deployment] %s: sync-wave must be \"5\" (got %q)", [object_name, sync_wave])
}
