"""The secrets, roles and TLS rules of a render, each listing what is wrong (overlays and pgo share them)."""

from __future__ import annotations

import base64
import posixpath
import re
import struct
import urllib.parse

from tests.deploy.manifests import (
    PLACEHOLDER,
    PLACEHOLDER_MARKER,
    Obj,
    annotations_of,
    containers,
    env_list,
    main_container,
    objects,
    one,
    pod_spec,
    wave,
)

NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}
RUNTIME_ROLE = "chat-runtime"
RUNTIME_SECRET = "chat-db-runtime"
OWNER_SECRET = "chat-db-cnpg-app"
CA_SECRET = "chat-db-cnpg-ca"
JWT_SECRET = "chat-api-jwt"
JWT_FILE = "/etc/chat-api/jwt/secret"
PASSWORD_FILE = "/etc/chat-api/db-runtime/password"
CA_FILE = "/etc/chat-api/db-ca/ca.crt"
OWNER_URL_FILE = "/etc/chat-api/db/uri"
RUNTIME_URL = "postgresql://chat-runtime@chat-db-cnpg-rw:5432/chat"
SCOPE_ANNOTATIONS = ("sealedsecrets.bitnami.com/namespace-wide", "sealedsecrets.bitnami.com/cluster-wide")
# A CloudNativePG PostgreSQL image with at least major.minor in its tag (or a digest).
PINNED_IMAGE = re.compile(
    r"^ghcr\.io/cloudnative-pg/postgresql(?::(\d+)\.\d+(?:[.-][a-z0-9.-]+)?|@sha256:[0-9a-f]{64})$"
)

Problems = list[str]


def env_map(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in env_list(container)}


def secret_volume(workload: Obj, secret: str) -> Obj | None:
    found = [
        v for v in pod_spec(workload).get("volumes", []) if v.get("secret", {}).get("secretName") == secret
    ]
    return found[0] if len(found) == 1 else None


def mounted_file_problems(workload: Obj, secret: str, key: str, path: str) -> Problems:
    """`path` is key `key` of secret `secret`, mounted read-only without subPath (updated in place)."""
    volume = secret_volume(workload, secret)
    if volume is None:
        return [f"no single volume of secret {secret}"]
    problems = []
    if volume["secret"].get("items") != [{"key": key, "path": posixpath.basename(path)}]:
        problems.append(f"volume {volume['name']} should mount only key {key} as {posixpath.basename(path)}")
    mounts = [m for m in main_container(workload).get("volumeMounts", []) if m["name"] == volume["name"]]
    if len(mounts) != 1:
        return [*problems, f"volume {volume['name']} is not mounted once"]
    (mount,) = mounts
    if mount["mountPath"] != posixpath.dirname(path):
        problems.append(f"{secret} is mounted at {mount['mountPath']}, not {posixpath.dirname(path)}")
    if "subPath" in mount or "subPathExpr" in mount:
        problems.append(f"{secret} is mounted with subPath: never updated after a rotation")
    if mount.get("readOnly") is not True:
        problems.append(f"{secret} is mounted writable")
    return problems


def env_references_secret(container: Obj, secret: str) -> bool:
    for entry in env_list(container):
        if entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret:
            return True
    return any(source.get("secretRef", {}).get("name") == secret for source in container.get("envFrom", []))


def workload_references_secret(workload: Obj, secret: str) -> bool:
    for volume in pod_spec(workload).get("volumes", []):
        if volume.get("secret", {}).get("secretName") == secret:
            return True
        for source in volume.get("projected", {}).get("sources", []):
            if source.get("secret", {}).get("name") == secret:
                return True
    return any(env_references_secret(c, secret) for c in containers(workload))


# ---- the rules ------------------------------------------------------------------------------------


def is_placeholder(value: str) -> bool:
    """The placeholder, and a value the controller would try to decrypt (not reject as too short)."""
    raw = base64.b64decode(value, validate=True)
    (rsa_len,) = struct.unpack(">H", raw[:2])
    return value == PLACEHOLDER and raw[2:] == PLACEHOLDER_MARKER and len(raw) >= rsa_len + 2


def sealed_secret_problems(
    objs: list[Obj], name: str, namespace: str, secret_type: str, keys: set[str]
) -> Problems:
    found = [o for o in objects(objs, "SealedSecret") if o["metadata"]["name"] == name]
    if len(found) != 1:
        return [f"expected one SealedSecret {name}, found {len(found)}"]
    (sealed,) = found
    problems = []
    if sealed["apiVersion"] != "bitnami.com/v1alpha1":
        problems.append(f"apiVersion {sealed['apiVersion']}")
    template = sealed["spec"].get("template", {})
    meta = template.get("metadata") or {}
    if sealed["metadata"].get("namespace") != namespace or meta.get("namespace") != namespace:
        problems.append(f"not sealed for namespace {namespace}")
    if meta.get("name") != name:
        problems.append(f"the template makes {meta.get('name')}, not {name}")
    for notes in (annotations_of(sealed), meta.get("annotations") or {}):
        for scope in SCOPE_ANNOTATIONS:
            if notes.get(scope) == "true":
                problems.append(f"{scope}: not strict scope")
    if template.get("type") != secret_type:
        problems.append(f"the template makes type {template.get('type')}, not {secret_type}")
    encrypted = sealed["spec"].get("encryptedData") or {}
    if set(encrypted) != keys:
        problems.append(f"encrypted keys {sorted(encrypted)}, not {sorted(keys)}")
    for key, value in encrypted.items():
        if not is_placeholder(value):
            problems.append(f"{key} is not the placeholder: a value sealed for a cluster in this repository")
    later = [wave(o) for kind in ("Cluster", "Job", "Deployment") for o in objects(objs, kind)]
    if (
        annotations_of(sealed).get("argocd.argoproj.io/sync-wave") != "2"
        or not later
        or wave(sealed) >= min(later)
    ):
        problems.append('sync-wave must be "2", before the Cluster, the migration Job and the Deployment')
    return problems


def jwt_problems(objs: list[Obj]) -> Problems:
    """The key reaches the server only as the mounted file; no pod gets it from the environment."""
    problems = []
    deployment = one(objs, "Deployment", "chat-api")
    server = main_container(deployment)
    if env_map(server).get("CHAT_API_JWT_SECRET_FILE", {}).get("value") != JWT_FILE:
        problems.append(f"CHAT_API_JWT_SECRET_FILE is not {JWT_FILE}")
    problems += mounted_file_problems(deployment, JWT_SECRET, "secret", JWT_FILE)
    for workload in (deployment, one(objs, "Job")):
        for container in containers(workload):
            if "CHAT_API_JWT_SECRET" in env_map(container) or env_references_secret(container, JWT_SECRET):
                problems.append(f"{workload['kind']}: the JWT key in an environment variable")
    for config in objects(objs, "ConfigMap"):
        if "CHAT_API_JWT_SECRET" in (config.get("data") or {}):
            problems.append("the JWT key in a ConfigMap")
    return problems


def runtime_role_problems(objs: list[Obj]) -> Problems:
    """chat-runtime: declared in the Cluster with its password secret, least privilege; used by the
    Deployment; the Job stays on the owner and grants to it."""
    problems = []
    cluster = one(objs, "Cluster", "chat-db-cnpg")
    roles = [r for r in cluster["spec"].get("managed", {}).get("roles", []) if r["name"] == RUNTIME_ROLE]
    if len(roles) != 1:
        return [f"the Cluster declares no managed role {RUNTIME_ROLE}"]
    (role,) = roles
    if role.get("login") is not True or role.get("ensure", "present") != "present":
        problems.append("the role must be present and able to log in")
    if role.get("passwordSecret") != {"name": RUNTIME_SECRET}:
        problems.append(f"the role's passwordSecret is not {RUNTIME_SECRET}")
    for power in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
        if role.get(power):
            problems.append(f"the runtime role has {power}")
    if role.get("inRoles"):
        problems.append(
            f"the runtime role is a member of {role['inRoles']} (the owner's rights would follow)"
        )
    owner = cluster["spec"]["bootstrap"]["initdb"]["owner"]
    if owner == RUNTIME_ROLE:
        problems.append("the runtime role owns the database")
    sealed = [o for o in objects(objs, "SealedSecret") if o["metadata"]["name"] == RUNTIME_SECRET]
    if not sealed or (sealed[0]["spec"]["template"].get("data") or {}).get("username") != RUNTIME_ROLE:
        problems.append(f"secret {RUNTIME_SECRET} does not name user {RUNTIME_ROLE}")

    deployment = one(objs, "Deployment", "chat-api")
    server = env_map(main_container(deployment))
    url = urllib.parse.urlsplit(server.get("DATABASE_URL", {}).get("value", ""))
    if (url.username, url.password, url.hostname, url.port, url.path) != (
        RUNTIME_ROLE,
        None,
        "chat-db-cnpg-rw",
        5432,
        "/chat",
    ):
        problems.append(f"the server's DATABASE_URL is not {RUNTIME_URL} (no password)")
    if "DATABASE_URL_FILE" in server:
        problems.append("DATABASE_URL_FILE in the server: it wins over DATABASE_URL")
    if server.get("CHAT_API_DB_PASSWORD_FILE", {}).get("value") != PASSWORD_FILE:
        problems.append(f"CHAT_API_DB_PASSWORD_FILE is not {PASSWORD_FILE}")
    problems += mounted_file_problems(deployment, RUNTIME_SECRET, "password", PASSWORD_FILE)

    job = one(objs, "Job", "chat-api-migrate")
    migrate = env_map(main_container(job))
    if migrate.get("DATABASE_URL_FILE", {}).get("value") != OWNER_URL_FILE:
        problems.append(f"the migration's DATABASE_URL_FILE is not {OWNER_URL_FILE}")
    problems += mounted_file_problems(job, OWNER_SECRET, "uri", OWNER_URL_FILE)
    if migrate.get("CHAT_API_DB_RUNTIME_ROLE", {}).get("value") != RUNTIME_ROLE:
        problems.append(f"the migration does not grant to {RUNTIME_ROLE}")
    if "DATABASE_URL" in migrate or "CHAT_API_DB_PASSWORD_FILE" in migrate:
        problems.append("the migration gets the runtime connection")
    for config in objects(objs, "ConfigMap"):
        data = config.get("data") or {}
        for key in (
            "DATABASE_URL",
            "DATABASE_URL_FILE",
            "CHAT_API_DB_PASSWORD_FILE",
            "CHAT_API_DB_RUNTIME_ROLE",
        ):
            if key in data:
                problems.append(f"{key} in the ConfigMap reaches both pods")
    return problems


def owner_secret_problems(objs: list[Obj]) -> Problems:
    deployment = one(objs, "Deployment", "chat-api")
    if workload_references_secret(deployment, OWNER_SECRET):
        return [f"the server pod references the owner's secret {OWNER_SECRET}"]
    return []


def tls_problems(objs: list[Obj], ca_secret: str = CA_SECRET) -> Problems:
    """`ca_secret`: the operator's CA secret (CNPG's here; pgo's in test_pgo_component.py)."""
    problems = []
    for workload in (one(objs, "Deployment"), one(objs, "Job")):
        env = env_map(main_container(workload))
        if env.get("PGSSLMODE", {}).get("value") != "verify-full":
            problems.append(f"{workload['kind']}: PGSSLMODE is not verify-full")
        if env.get("PGSSLROOTCERT", {}).get("value") != CA_FILE:
            problems.append(f"{workload['kind']}: PGSSLROOTCERT is not {CA_FILE}")
        problems += [
            f"{workload['kind']}: {p}" for p in mounted_file_problems(workload, ca_secret, "ca.crt", CA_FILE)
        ]
        url = env.get("DATABASE_URL", {}).get("value", "")
        if "sslmode" in url or "sslrootcert" in url:
            problems.append(f"{workload['kind']}: the URL overrides the TLS variables")
    for config in objects(objs, "ConfigMap"):
        if {"PGSSLMODE", "PGSSLROOTCERT"} & set(config.get("data") or {}):
            problems.append("TLS settings in the ConfigMap (the pods set them next to the CA mount)")
    return problems


def pdb_problems(name: str, objs: list[Obj]) -> Problems:
    enabled = one(objs, "Cluster")["spec"].get("enablePDB", True)
    if name == "dev" and enabled is not False:
        return ["dev's one-instance Cluster has a PodDisruptionBudget: node drains would hang"]
    if name != "dev" and enabled is not True:
        return [f"{name}'s Cluster has no PodDisruptionBudget"]
    return []


def image_problems(rendered: dict[str, list[Obj]]) -> Problems:
    problems = []
    majors = set()
    for name, objs in rendered.items():
        image = one(objs, "Cluster")["spec"].get("imageName", "")
        match = PINNED_IMAGE.match(image)
        if match is None:
            problems.append(f"{name}: imageName {image!r} is not a pinned CloudNativePG PostgreSQL image")
        else:
            majors.add(match.group(1))
    if len(majors) > 1:
        problems.append(f"PostgreSQL majors differ between environments: {sorted(majors)}")
    return problems
