# Secrets reach chat-api's pods as mounted files (re-read after a rotation), never as environment
# variables; the server never sees the database owner's credentials; pods that talk to the database
# verify its certificate; SealedSecrets are sealed for one name in one namespace.
package main

import rego.v1

env_entries contains [c, e] if {
	some c in containers
	some e in object.get(c, "env", [])
}

# Pods that connect to the database (the server and the migration Job).
talks_to_database(c) if {
	some e in object.get(c, "env", [])
	e.name in {"DATABASE_URL", "DATABASE_URL_FILE"}
}

env_value(c, name) := v if {
	some e in object.get(c, "env", [])
	e.name == name
	v := object.get(e, "value", "")
} else := ""

# Every Secret the pod references: volumes (plain and projected), env and envFrom.
referenced_secrets contains name if {
	some v in object.get(pod_spec, "volumes", [])
	name := v.secret.secretName
}

referenced_secrets contains name if {
	some v in object.get(pod_spec, "volumes", [])
	some s in v.projected.sources
	name := s.secret.name
}

referenced_secrets contains name if {
	some [_, e] in env_entries
	name := e.valueFrom.secretKeyRef.name
}

referenced_secrets contains name if {
	some c in containers
	some s in object.get(c, "envFrom", [])
	name := s.secretRef.name
}

deny contains msg if {
	some [c, e] in env_entries
	e.name == "CHAT_API_JWT_SECRET"
	msg := sprintf("[jwt-key-from-file] %s: container %q takes the JWT key from an environment variable; mount secret chat-api-jwt and set CHAT_API_JWT_SECRET_FILE", [object_name, c.name])
}

deny contains msg if {
	some [c, e] in env_entries
	e.valueFrom.secretKeyRef.name == "chat-api-jwt"
	msg := sprintf("[jwt-key-from-file] %s: container %q reads secret chat-api-jwt into %s; mount it as a file instead", [object_name, c.name, e.name])
}

# CloudNativePG names the owner's (the application database owner's) secret <cluster>-app; pgo
# names every user's secret <cluster>-pguser-<user>, so there the owner is known by its role name
# (owner_roles: change it with the PostgresCluster's users). The server connects as a runtime role
# without DDL rights; only the migration Job uses the owner.
owner_roles := {"chatapi"}

owner_secret(name) if endswith(name, "-app")

owner_secret(name) if {
	some role in owner_roles
	endswith(name, concat("", ["-pguser-", role]))
}

deny contains msg if {
	input.kind == "Deployment"
	some name in referenced_secrets
	owner_secret(name)
	msg := sprintf("[server-no-owner-secret] %s: the server pod references %q, the database owner's secret; connect as the runtime role", [object_name, name])
}

deny contains msg if {
	some c in containers
	talks_to_database(c)
	env_value(c, "PGSSLMODE") != "verify-full"
	msg := sprintf("[db-tls-verify-full] %s: container %q connects to the database without PGSSLMODE=verify-full", [object_name, c.name])
}

deny contains msg if {
	some c in containers
	talks_to_database(c)
	env_value(c, "PGSSLROOTCERT") == ""
	msg := sprintf("[db-tls-verify-full] %s: container %q has no PGSSLROOTCERT (the cluster CA) to verify the database", [object_name, c.name])
}

deny contains msg if {
	input.kind == "SealedSecret"
	some notes in [
		object.get(input, ["metadata", "annotations"], {}),
		object.get(input, ["spec", "template", "metadata", "annotations"], {}),
	]
	some scope in ["sealedsecrets.bitnami.com/namespace-wide", "sealedsecrets.bitnami.com/cluster-wide"]
	notes[scope] == "true"
	msg := sprintf("[sealed-secret-strict] %s: sealed with a wider scope (%s); seal with --scope strict", [object_name, scope])
}
