#!/usr/bin/env bash
# Generate fresh random values for chat-api's secrets and seal them for one overlay's namespace with
# kubeseal (strict scope: valid only under that name, in that namespace, for that cluster's
# controller key). Rewrites deploy/overlays/ENV/sealedsecret-*.yaml; commit them. No plaintext is
# written to disk or passed on a command line.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: deploy/seal-secrets.sh ENV [SECRET...]

Seal fresh random values into deploy/overlays/ENV/ for the namespace of that overlay.
  ENV      an overlay under deploy/overlays (dev, prd)
  SECRET   chat-api-jwt and/or chat-db-runtime (default: both)

  chat-api-jwt     a new HS256 key (64 hex characters). The file holds one key per line: the first
                   signs, all verify. To keep accepting tokens signed with the current key while they
                   expire, put the key(s) to keep, one per line, in a file and set
                   JWT_KEEP_KEYS_FILE=that-file: they are sealed after the new key.
  chat-db-runtime  a new password for the database role chat-runtime (username chat-runtime).
                   CloudNativePG sets the role's password from it; the server re-reads it for every
                   new connection.

Environment:
  KUBESEAL                       kubeseal binary (default: kubeseal)
  SEALED_SECRETS_CONTROLLER_NAME       controller name (default: sealed-secrets-controller)
  SEALED_SECRETS_CONTROLLER_NAMESPACE  controller namespace (default: kube-system)
  SEALED_SECRETS_CERT            seal offline with this certificate (kubeseal --fetch-cert) instead
                                 of asking the controller
  JWT_KEEP_KEYS_FILE             see chat-api-jwt above
EOF
}

die() {
	echo "seal-secrets.sh: $*" >&2
	exit 2
}

[[ $# -ge 1 ]] || {
	usage >&2
	exit 2
}
case $1 in
-h | --help)
	usage
	exit 0
	;;
esac

env_name=$1
shift
deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $env_name =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "not an environment name: $env_name"
overlay=$deploy_dir/overlays/$env_name
[[ -f $overlay/kustomization.yaml ]] || die "unknown environment $env_name (no $overlay/kustomization.yaml)"
namespace=$(sed -n 's/^namespace:[[:space:]]*\([a-z0-9-]*\)[[:space:]]*$/\1/p' "$overlay/kustomization.yaml")
[[ -n $namespace ]] || die "$overlay/kustomization.yaml sets no namespace"

secrets=("$@")
[[ ${#secrets[@]} -gt 0 ]] || secrets=(chat-api-jwt chat-db-runtime)
for name in "${secrets[@]}"; do
	case $name in
	chat-api-jwt | chat-db-runtime) ;;
	*) die "unknown secret $name (chat-api-jwt or chat-db-runtime)" ;;
	esac
done

kubeseal=${KUBESEAL:-kubeseal}
command -v "$kubeseal" >/dev/null || die "$kubeseal not found: install kubeseal (github.com/bitnami-labs/sealed-secrets)"
seal_args=(--raw --scope strict --namespace "$namespace")
if [[ -n ${SEALED_SECRETS_CERT:-} ]]; then
	seal_args+=(--cert "$SEALED_SECRETS_CERT")
else
	seal_args+=(
		--controller-name "${SEALED_SECRETS_CONTROLLER_NAME:-sealed-secrets-controller}"
		--controller-namespace "${SEALED_SECRETS_CONTROLLER_NAMESPACE:-kube-system}"
	)
fi

# seal NAME: the value on stdin, the ciphertext (base64, one line) on stdout.
seal() {
	"$kubeseal" "${seal_args[@]}" --name "$1" --from-file=/dev/stdin
}

random_hex() {
	openssl rand -hex 32
}

header() {
	cat <<EOF
# $1
# Written by deploy/seal-secrets.sh $env_name (kubeseal --scope strict): it decrypts only as
# $2 in namespace $namespace, with the key of the controller it was sealed for.
# Until it has run for your cluster, the value is the repository's PLACEHOLDER, which no key can
# decrypt: the sealed-secrets controller reports "no key could decrypt secret", ArgoCD's health of
# this SealedSecret is Degraded and the sync stops at wave 2, so nothing ever starts with a key
# known from this repository.
EOF
}

labels() {
	cat <<EOF
  labels:
    app.kubernetes.io/name: chat-api
    app.kubernetes.io/part-of: chat
    app.kubernetes.io/component: $1
EOF
}

write_jwt() {
	local key ciphertext
	key=$(random_hex)
	if [[ -n ${JWT_KEEP_KEYS_FILE:-} ]]; then
		[[ -r $JWT_KEEP_KEYS_FILE ]] || die "cannot read JWT_KEEP_KEYS_FILE $JWT_KEEP_KEYS_FILE"
		ciphertext=$({
			printf '%s\n' "$key"
			grep -v '^[[:space:]]*$' "$JWT_KEEP_KEYS_FILE"
		} | seal chat-api-jwt)
	else
		ciphertext=$(printf '%s' "$key" | seal chat-api-jwt)
	fi
	{
		header "chat-api-jwt: the HS256 key(s) of chat-api, one per line (the first signs, all verify)." chat-api-jwt
		cat <<EOF
apiVersion: bitnami.com/v1alpha1
kind: SealedSecret
metadata:
  name: chat-api-jwt
  namespace: $namespace
$(labels auth)
  annotations:
    # Before the CNPG Cluster (3), the migration Job (4) and the Deployment (5) that mounts it.
    argocd.argoproj.io/sync-wave: "2"
spec:
  encryptedData:
    secret: $ciphertext
  template:
    metadata:
      name: chat-api-jwt
      namespace: $namespace
$(labels auth | sed 's/^/    /')
    type: Opaque
EOF
	} >"$overlay/sealedsecret-chat-api-jwt.yaml.tmp"
	mv "$overlay/sealedsecret-chat-api-jwt.yaml.tmp" "$overlay/sealedsecret-chat-api-jwt.yaml"
}

write_db_runtime() {
	local ciphertext
	ciphertext=$(printf '%s' "$(random_hex)" | seal chat-db-runtime)
	{
		header "chat-db-runtime: the password of the database role chat-runtime (basic-auth, as CloudNativePG wants)." chat-db-runtime
		cat <<EOF
apiVersion: bitnami.com/v1alpha1
kind: SealedSecret
metadata:
  name: chat-db-runtime
  namespace: $namespace
$(labels database)
  annotations:
    # Before the CNPG Cluster (3), whose managed role chat-runtime takes its password from it.
    argocd.argoproj.io/sync-wave: "2"
spec:
  encryptedData:
    password: $ciphertext
  template:
    metadata:
      name: chat-db-runtime
      namespace: $namespace
$(labels database | sed 's/^/    /')
    type: kubernetes.io/basic-auth
    # Not secret: the role name, in clear (a template without placeholders is copied as it is).
    data:
      username: chat-runtime
EOF
	} >"$overlay/sealedsecret-chat-db-runtime.yaml.tmp"
	mv "$overlay/sealedsecret-chat-db-runtime.yaml.tmp" "$overlay/sealedsecret-chat-db-runtime.yaml"
}

for name in "${secrets[@]}"; do
	case $name in
	chat-api-jwt) write_jwt ;;
	chat-db-runtime) write_db_runtime ;;
	esac
	echo "sealed $name for namespace $namespace: $overlay/sealedsecret-$name.yaml" >&2
done
