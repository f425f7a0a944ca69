#!/usr/bin/env bash
# Download the upstream CustomResourceDefinitions the deploy tests validate against into DEST, each
# from its project's repository at a pinned commit, and check its sha256. Then point the tests at
# it: CHAT_API_CRDS_DIR=DEST pytest tests/deploy
#
#   scripts/fetch-crds.sh DEST
#
# The files are Apache-2.0 and stay out of this repository. The sha256 is what pins them: most commits
# are known here only by the short id the shared folder's README gives, and whatever comes back for
# it must still have this hash.
# CRDS_BASE_URL replaces https://raw.githubusercontent.com (a mirror; the tests use a file:// tree).
set -euo pipefail

if [[ $# -ne 1 || -z $1 ]]; then
  echo "usage: $0 DEST" >&2
  exit 2
fi
dest=$1
base=${CRDS_BASE_URL:-https://raw.githubusercontent.com}
mkdir -p "$dest"

# A short commit id, resolved to the full one through the GitHub API (GITHUB_TOKEN, if set, raises the
# rate limit); as given when that fails, for GitHub to resolve in the download URL.
full_commit() {
  local repository=$1 commit=$2 sha
  local auth=()
  if [[ $commit =~ ^[0-9a-f]{40}$ || $base != https://raw.githubusercontent.com ]]; then
    echo "$commit"
    return
  fi
  if [[ -n ${GITHUB_TOKEN:-} ]]; then
    auth=(--header "Authorization: Bearer $GITHUB_TOKEN")
  fi
  if sha=$(curl --fail --silent --location --retry 3 "${auth[@]}" \
      --header "Accept: application/vnd.github.sha" \
      "https://api.github.com/repos/$repository/commits/$commit") &&
    [[ $sha =~ ^[0-9a-f]{40}$ && $sha == "$commit"* ]]; then
    echo "$sha"
  else
    echo "$commit"
  fi
}

failed=0
# crd FILE REPOSITORY COMMIT PATH SHA256
crd() {
  local file=$1 repository=$2 commit=$3 path=$4 sha256=$5
  commit=$(full_commit "$repository" "$commit")
  local url="$base/$repository/$commit/$path"
  local part="$dest/.$file.part"
  if ! curl --fail --silent --show-error --location --retry 3 --retry-all-errors \
      --proto '=https,file' --output "$part" "$url"; then
    echo "error: could not download $url" >&2
    rm -f "$part"
    failed=1
    return
  fi
  local actual
  actual=$(sha256sum "$part" | cut -d' ' -f1)
  if [[ $actual != "$sha256" ]]; then
    echo "error: $file from $url has sha256 $actual, expected $sha256" >&2
    rm -f "$part"
    failed=1
    return
  fi
  mv "$part" "$dest/$file"
  echo "$file  $repository@$commit  sha256 ok"
}

# The commits the copies in the platform's shared crds/ folder were taken from (its README).
crd postgresql.cnpg.io_clusters.yaml cloudnative-pg/cloudnative-pg a95a534 \
  config/crd/bases/postgresql.cnpg.io_clusters.yaml \
  6c9d24b55dcaee1e525e507c35fbc07ae1d2e31f8fbbb85dc015d1f98a537059
crd postgresql.cnpg.io_poolers.yaml cloudnative-pg/cloudnative-pg a95a534 \
  config/crd/bases/postgresql.cnpg.io_poolers.yaml \
  9e0dad05355f72dceb154a12b43ebe8a410d470133ad228bf711c1fdee221124
crd argocd-image-updater.argoproj.io_imageupdaters.yaml argoproj-labs/argocd-image-updater de2cfec6 \
  config/crd/bases/argocd-image-updater.argoproj.io_imageupdaters.yaml \
  99e0594325f9dc1b2f8947ea35b60bbb39c6b1eb0c5a6e80cb4feae72911d630
crd argoproj.io_applications.yaml argoproj/argo-cd 37ee0097cf \
  manifests/crds/application-crd.yaml \
  9fd0da3e7097ad6d1af614fabd5c960bc7ddb00d768c3ef485a2fda6e9460df8
crd postgres-operator.crunchydata.com_postgresclusters.yaml CrunchyData/postgres-operator \
  0fbac3062d649b2b5fadde4e00f17bad250c0052 \
  config/crd/bases/postgres-operator.crunchydata.com_postgresclusters.yaml \
  9f3fa66ce750f7a958ae70d9e9b002ecc55bca7b0bd3bc32e6bc3ffa2883c1e8
crd bitnami.com_sealedsecrets.yaml bitnami-labs/sealed-secrets 86671a88 \
  helm/sealed-secrets/crds/bitnami.com_sealedsecrets.yaml \
  fb33ba448b89c2c3252480664078b7f4bdf0949426e5280d07ca049c0dbdbfb7

if ((failed)); then
  echo "error: some CRDs could not be fetched or did not match their sha256" >&2
  exit 1
fi
echo "CRDs in $dest"
