"""Secrets, database roles and TLS in the rendered overlays. Each rule is a function that lists what is
wrong; the rendered overlays give an empty list, and a mutated copy of a rendered object (the way the
rule would be broken in a review) must give a non-empty one, so no rule passes vacuously.

- the JWT key and the runtime role's password arrive as SealedSecrets (strict scope, the overlay's
  namespace, wave 2, the committed value a placeholder no controller can decrypt);
- the JWT key reaches the server only as a mounted file, never as an environment variable;
- the server connects as the CNPG managed role chat-runtime with its password file, never sees the
  owner's secret; the migration Job connects as the owner and grants to chat-runtime;
- both pods verify the server certificate (verify-full, the CNPG CA mounted);
- dev's one-instance database has no PodDisruptionBudget; the PostgreSQL image is pinned."""

from __future__ import annotations

import base64
import copy
import struct
from collections.abc import Callable

import pytest

from tests.deploy.manifests import (
    OVERLAYS,
    PLACEHOLDER,
    PLACEHOLDER_MARKER,
    Obj,
    one,
    pod_spec,
)
from tests.deploy.secret_rules import (
    CA_SECRET,
    JWT_SECRET,
    NAMESPACES,
    OWNER_SECRET,
    OWNER_URL_FILE,
    RUNTIME_SECRET,
    RUNTIME_URL,
    image_problems,
    jwt_problems,
    owner_secret_problems,
    pdb_problems,
    runtime_role_problems,
    sealed_secret_problems,
    secret_volume,
    tls_problems,
)

# ---- the rendered overlays pass -------------------------------------------------------------------


def test_jwt_sealed_secret(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    assert sealed_secret_problems(objs, JWT_SECRET, NAMESPACES[name], "Opaque", {"secret"}) == []


def test_runtime_sealed_secret(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    problems = sealed_secret_problems(
        objs, RUNTIME_SECRET, NAMESPACES[name], "kubernetes.io/basic-auth", {"password"}
    )
    assert problems == []


def test_placeholder_is_one_the_controller_tries_and_fails_to_decrypt() -> None:
    raw = base64.b64decode(PLACEHOLDER, validate=True)
    (rsa_len,) = struct.unpack(">H", raw[:2])
    # Not "too short" (that is a different error): the controller runs RSA-OAEP with each of its keys.
    # A 55-byte block is no OAEP ciphertext of a 2048-bit or larger key (those are as long as the
    # modulus, 256 bytes and up), so every key fails.
    assert rsa_len == len(PLACEHOLDER_MARKER) == len(raw) - 2 < 256


def test_jwt_key_only_as_a_mounted_file(overlay: tuple[str, list[Obj]]) -> None:
    assert jwt_problems(overlay[1]) == []


def test_runtime_role_for_the_server_owner_for_the_migration(overlay: tuple[str, list[Obj]]) -> None:
    assert runtime_role_problems(overlay[1]) == []


def test_server_never_mounts_the_owner_secret(overlay: tuple[str, list[Obj]]) -> None:
    assert owner_secret_problems(overlay[1]) == []


def test_tls_verified_with_the_cnpg_ca(overlay: tuple[str, list[Obj]]) -> None:
    assert tls_problems(overlay[1]) == []


def test_pdb_only_where_there_are_replicas(overlay: tuple[str, list[Obj]]) -> None:
    assert pdb_problems(*overlay) == []


def test_postgresql_image_pinned_with_one_major(rendered: dict[str, list[Obj]]) -> None:
    assert set(rendered) == set(OVERLAYS)
    assert image_problems(rendered) == []


# ---- ... and each rule fails a broken copy --------------------------------------------------------

Mutation = Callable[[list[Obj]], None]


def deployment(objs: list[Obj]) -> Obj:
    return one(objs, "Deployment")


def job(objs: list[Obj]) -> Obj:
    return one(objs, "Job")


def sealed(objs: list[Obj], name: str) -> Obj:
    return next(o for o in objs if o["kind"] == "SealedSecret" and o["metadata"]["name"] == name)


def set_env(workload: Obj, name: str, entry: Obj) -> None:
    container = pod_spec(workload)["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, **entry}]


def drop_env(workload: Obj, name: str) -> None:
    container = pod_spec(workload)["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != name]


def mount_of(workload: Obj, secret: str) -> Obj:
    volume = secret_volume(workload, secret)
    assert volume is not None
    return next(m for m in pod_spec(workload)["containers"][0]["volumeMounts"] if m["name"] == volume["name"])


def add_owner_volume(workload: Obj) -> None:
    pod_spec(workload)["volumes"].append({"name": "owner", "secret": {"secretName": OWNER_SECRET}})


SEALED_BREAKS: dict[str, Mutation] = {
    "missing": lambda objs: objs.remove(sealed(objs, JWT_SECRET)),
    "other-namespace": lambda objs: sealed(objs, JWT_SECRET)["metadata"].update(namespace="default"),
    "template-namespace": lambda objs: sealed(objs, JWT_SECRET)["spec"]["template"]["metadata"].update(
        namespace="default"
    ),
    "cluster-wide": lambda objs: (
        sealed(objs, JWT_SECRET)["metadata"]
        .setdefault("annotations", {})
        .update({"sealedsecrets.bitnami.com/cluster-wide": "true"})
    ),
    "namespace-wide-template": lambda objs: sealed(objs, JWT_SECRET)["spec"]["template"]["metadata"].update(
        annotations={"sealedsecrets.bitnami.com/namespace-wide": "true"}
    ),
    "wave-with-deployment": lambda objs: sealed(objs, JWT_SECRET)["metadata"]["annotations"].update(
        {"argocd.argoproj.io/sync-wave": "5"}
    ),
    "wave-with-cluster": lambda objs: sealed(objs, JWT_SECRET)["metadata"]["annotations"].update(
        {"argocd.argoproj.io/sync-wave": "3"}
    ),
    "real-ciphertext": lambda objs: sealed(objs, JWT_SECRET)["spec"]["encryptedData"].update(
        secret=base64.b64encode(b"\x02\x00" + bytes(600)).decode()
    ),
    "not-base64-key": lambda objs: sealed(objs, JWT_SECRET)["spec"]["encryptedData"].update(jwt=PLACEHOLDER),
    "wrong-type": lambda objs: sealed(objs, JWT_SECRET)["spec"]["template"].update(type="kubernetes.io/tls"),
}


@pytest.mark.parametrize("break_", SEALED_BREAKS.values(), ids=SEALED_BREAKS.keys())
def test_sealed_secret_rule_rejects(break_: Mutation, rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["dev"])
    break_(objs)
    assert sealed_secret_problems(objs, JWT_SECRET, NAMESPACES["dev"], "Opaque", {"secret"}) != []


JWT_BREAKS: dict[str, Mutation] = {
    "env-from-secret": lambda objs: set_env(
        deployment(objs),
        "CHAT_API_JWT_SECRET",
        {"valueFrom": {"secretKeyRef": {"name": JWT_SECRET, "key": "secret"}}},
    ),
    "env-value": lambda objs: set_env(job(objs), "CHAT_API_JWT_SECRET", {"value": "x" * 40}),
    "envfrom-secret": lambda objs: pod_spec(deployment(objs))["containers"][0]["envFrom"].append(
        {"secretRef": {"name": JWT_SECRET}}
    ),
    "subpath": lambda objs: mount_of(deployment(objs), JWT_SECRET).update(subPath="secret"),
    "wrong-path": lambda objs: set_env(
        deployment(objs), "CHAT_API_JWT_SECRET_FILE", {"value": "/etc/chat-api/jwt-key"}
    ),
    "not-mounted": lambda objs: pod_spec(deployment(objs))["containers"][0]["volumeMounts"].remove(
        mount_of(deployment(objs), JWT_SECRET)
    ),
    "in-configmap": lambda objs: one(objs, "ConfigMap")["data"].update(CHAT_API_JWT_SECRET="x" * 40),
}


@pytest.mark.parametrize("break_", JWT_BREAKS.values(), ids=JWT_BREAKS.keys())
def test_jwt_rule_rejects(break_: Mutation, rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["prd"])
    break_(objs)
    assert jwt_problems(objs) != []


ROLE_BREAKS: dict[str, Mutation] = {
    "no-managed-role": lambda objs: one(objs, "Cluster")["spec"].pop("managed"),
    "other-password-secret": lambda objs: one(objs, "Cluster")["spec"]["managed"]["roles"][0].update(
        passwordSecret={"name": OWNER_SECRET}
    ),
    "superuser": lambda objs: one(objs, "Cluster")["spec"]["managed"]["roles"][0].update(superuser=True),
    "member-of-owner": lambda objs: one(objs, "Cluster")["spec"]["managed"]["roles"][0].update(
        inRoles=["chatapi"]
    ),
    "no-login": lambda objs: one(objs, "Cluster")["spec"]["managed"]["roles"][0].update(login=False),
    "secret-other-user": lambda objs: sealed(objs, RUNTIME_SECRET)["spec"]["template"].update(
        data={"username": "chatapi"}
    ),
    "server-as-owner": lambda objs: set_env(
        deployment(objs), "DATABASE_URL", {"value": "postgresql://chatapi@chat-db-cnpg-rw:5432/chat"}
    ),
    "password-in-url": lambda objs: set_env(
        deployment(objs), "DATABASE_URL", {"value": "postgresql://chat-runtime:pw@chat-db-cnpg-rw:5432/chat"}
    ),
    "server-url-file-wins": lambda objs: set_env(
        deployment(objs), "DATABASE_URL_FILE", {"value": OWNER_URL_FILE}
    ),
    "password-subpath": lambda objs: mount_of(deployment(objs), RUNTIME_SECRET).update(subPath="password"),
    "no-password-file": lambda objs: drop_env(deployment(objs), "CHAT_API_DB_PASSWORD_FILE"),
    "migration-as-runtime": lambda objs: set_env(job(objs), "DATABASE_URL", {"value": RUNTIME_URL}),
    "no-grant": lambda objs: drop_env(job(objs), "CHAT_API_DB_RUNTIME_ROLE"),
    "grant-other-role": lambda objs: set_env(job(objs), "CHAT_API_DB_RUNTIME_ROLE", {"value": "chatapi"}),
    "url-in-configmap": lambda objs: one(objs, "ConfigMap")["data"].update(DATABASE_URL=RUNTIME_URL),
}


@pytest.mark.parametrize("break_", ROLE_BREAKS.values(), ids=ROLE_BREAKS.keys())
def test_runtime_role_rule_rejects(break_: Mutation, rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["dev"])
    break_(objs)
    assert runtime_role_problems(objs) != []


OWNER_BREAKS: dict[str, Mutation] = {
    "volume": lambda objs: add_owner_volume(deployment(objs)),
    "projected": lambda objs: pod_spec(deployment(objs))["volumes"].append(
        {"name": "p", "projected": {"sources": [{"secret": {"name": OWNER_SECRET}}]}}
    ),
    "env": lambda objs: set_env(
        deployment(objs),
        "PGPASSWORD",
        {"valueFrom": {"secretKeyRef": {"name": OWNER_SECRET, "key": "password"}}},
    ),
}


@pytest.mark.parametrize("break_", OWNER_BREAKS.values(), ids=OWNER_BREAKS.keys())
def test_owner_secret_rule_rejects(break_: Mutation, rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["prd"])
    break_(objs)
    assert owner_secret_problems(objs) != []


TLS_BREAKS: dict[str, Mutation] = {
    "server-require": lambda objs: set_env(deployment(objs), "PGSSLMODE", {"value": "require"}),
    "job-no-mode": lambda objs: drop_env(job(objs), "PGSSLMODE"),
    "job-no-root-cert": lambda objs: drop_env(job(objs), "PGSSLROOTCERT"),
    "server-ca-not-mounted": lambda objs: pod_spec(deployment(objs))["containers"][0]["volumeMounts"].remove(
        mount_of(deployment(objs), CA_SECRET)
    ),
    "job-ca-subpath": lambda objs: mount_of(job(objs), CA_SECRET).update(subPath="ca.crt"),
    "url-disables": lambda objs: set_env(
        deployment(objs), "DATABASE_URL", {"value": RUNTIME_URL + "?sslmode=disable"}
    ),
    "in-configmap": lambda objs: one(objs, "ConfigMap")["data"].update(PGSSLMODE="disable"),
}


@pytest.mark.parametrize("break_", TLS_BREAKS.values(), ids=TLS_BREAKS.keys())
def test_tls_rule_rejects(break_: Mutation, rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["dev"])
    break_(objs)
    assert tls_problems(objs) != []


def test_pdb_rule_rejects(rendered: dict[str, list[Obj]]) -> None:
    dev = copy.deepcopy(rendered["dev"])
    one(dev, "Cluster")["spec"].pop("enablePDB")  # the default: true
    assert pdb_problems("dev", dev) != []
    prd = copy.deepcopy(rendered["prd"])
    one(prd, "Cluster")["spec"]["enablePDB"] = False
    assert pdb_problems("prd", prd) != []


@pytest.mark.parametrize(
    ("env", "image"),
    [
        ("prd", None),
        ("prd", "ghcr.io/cloudnative-pg/postgresql:17"),
        ("prd", "ghcr.io/cloudnative-pg/postgresql:latest"),
        ("dev", "ghcr.io/cloudnative-pg/postgresql"),
        ("dev", "postgres:17.6"),
        ("dev", "ghcr.io/cloudnative-pg/postgresql:18.1"),  # a major other than prd's
    ],
)
def test_image_rule_rejects(env: str, image: str | None, rendered: dict[str, list[Obj]]) -> None:
    broken = copy.deepcopy(rendered)
    spec = one(broken[env], "Cluster")["spec"]
    if image is None:
        spec.pop("imageName")
    else:
        spec["imageName"] = image
    assert image_problems(broken) != []
