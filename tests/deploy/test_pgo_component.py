"""The pgo component (deploy/components/pgo): enabled in an overlay the documented way (one entry under
`components:`), dev and prd run on a pgo PostgresCluster instead of CloudNativePG. Each invariant is a
function that lists what is wrong; the pgo renders give an empty list, and mutated copies (the way a
review could break it) a non-empty one.

- no CNPG Cluster, no SealedSecret chat-db-runtime; the PostgresCluster chat-db (wave 3, before the
  Job's 4 and the Deployment's 5), valid against pgo's CRD, sized like the overlay's CNPG Cluster;
- users: the owner chatapi with database chat (made its owner by the one-time init SQL), the
  runtime role chat-runtime with no database and no powers;
- every CNPG secret, host and label is gone from the pods and the NetworkPolicy, pgo's are there;
  TLS verify-full on both pods with pgo's CA;
- nothing else differs from the CNPG render;
- the Rego policies pass (and the CNPG-only rules now cover the PostgresCluster)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import pytest
import regorus
import yaml
from asyncpg import connect_utils

from chat_api.core.dburl import parse_database_url
from tests.deploy.argocd_rules import PROJECT, application, project_problems
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    POLICY_DIR,
    REPO,
    CrdSchemas,
    Obj,
    annotations_of,
    changed_leaves,
    is_custom,
    kustomize,
    main_container,
    objects,
    one,
    pod_spec,
    wave,
)
from tests.deploy.secret_rules import (
    NAMESPACES,
    OWNER_URL_FILE,
    PASSWORD_FILE,
    env_map,
    jwt_problems,
    mounted_file_problems,
    sealed_secret_problems,
    tls_problems,
    workload_references_secret,
)
from tests.support.migrate import run_migrate
from tests.support.settings import with_database, with_user

KUBERNETES_VERSION = "1.34.0"
COMPONENT = "../../components/pgo"
PGO = "postgres-operator.crunchydata.com"
CLUSTER = "chat-db"
OWNER = "chatapi"
RUNTIME_ROLE = "chat-runtime"
OWNER_SECRET = f"{CLUSTER}-pguser-{OWNER}"
RUNTIME_SECRET = f"{CLUSTER}-pguser-{RUNTIME_ROLE}"
CA_SECRET = f"{CLUSTER}-cluster-cert"
HOST = f"{CLUSTER}-primary"
POD_LABEL = {f"{PGO}/cluster": CLUSTER}
INIT_SQL = "chat-db-init-sql"
# Everything that names CloudNativePG's objects: none of it may survive in the pgo render.
CNPG_WORDS = ("chat-db-cnpg", "cnpg.io", "chat-db-runtime", "postgresql.cnpg.io")
# A crunchy-postgres image of PostgreSQL 17 with a full tag (ubi9-17.<minor>-<build>) or a digest.
PINNED_IMAGE = re.compile(
    r"^registry\.developers\.crunchydata\.com/crunchydata/crunchy-postgres"
    r"(?::ubi\d+-17\.\d+-\d+|@sha256:[0-9a-f]{64})$"
)
POWERS = ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")

Problems = list[str]


def enable(overlay: Path) -> None:
    """What docs/deploy.md says: the component's entry under the overlay's `components:`."""
    kustomization = overlay / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["components"] = [*(data.get("components") or []), COMPONENT]
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def pgo_rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """Both overlays rendered with the component enabled in a copy of deploy/."""
    copied = tmp_path_factory.mktemp("pgo") / "deploy"
    shutil.copytree(DEPLOY, copied)
    out = {}
    for name in OVERLAYS:
        enable(copied / "overlays" / name)
        out[name] = kustomize(copied / "overlays" / name)
    return out


@pytest.fixture(params=OVERLAYS)
def pgo_overlay(request: pytest.FixtureRequest, pgo_rendered: dict[str, list[Obj]]) -> tuple[str, list[Obj]]:
    name = str(request.param)
    return name, pgo_rendered[name]


def named(objs: list[Obj], kind: str, name: str) -> list[Obj]:
    return [o for o in objects(objs, kind) if o["metadata"]["name"] == name]


# ---- the invariants -------------------------------------------------------------------------------


def objects_problems(name: str, objs: list[Obj]) -> Problems:
    """The CNPG Cluster and the runtime SealedSecret are gone; the PostgresCluster and its init SQL
    are there, in the overlay's namespace; the JWT SealedSecret stays as it was."""
    problems = []
    if objects(objs, "Cluster"):
        problems.append("a CNPG Cluster is still rendered")
    if named(objs, "SealedSecret", "chat-db-runtime"):
        problems.append("SealedSecret chat-db-runtime is still rendered (pgo generates that password)")
    clusters = objects(objs, "PostgresCluster")
    if [(c["apiVersion"], c["metadata"]["name"]) for c in clusters] != [(f"{PGO}/v1beta1", CLUSTER)]:
        problems.append(f"expected one {PGO}/v1beta1 PostgresCluster {CLUSTER}")
    if len(named(objs, "ConfigMap", INIT_SQL)) != 1:
        problems.append(f"no ConfigMap {INIT_SQL}")
    for obj in [*clusters, *named(objs, "ConfigMap", INIT_SQL)]:
        if obj["metadata"].get("namespace") != NAMESPACES[name]:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} is not in {NAMESPACES[name]}")
    problems += sealed_secret_problems(objs, "chat-api-jwt", NAMESPACES[name], "Opaque", {"secret"})
    return problems


def wave_problems(objs: list[Obj]) -> Problems:
    """The database in wave 3 (as the CNPG Cluster), before the migration Job (4) and the Deployment
    (5); its init SQL no later than the database."""
    clusters = objects(objs, "PostgresCluster")
    if len(clusters) != 1:
        return ["no single PostgresCluster"]
    waves = {
        "PostgresCluster": wave(clusters[0]),
        "Job": wave(one(objs, "Job")),
        "Deployment": wave(one(objs, "Deployment")),
    }
    problems = []
    if waves != {"PostgresCluster": 3, "Job": 4, "Deployment": 5}:
        problems.append(f"waves {waves}, want PostgresCluster 3, Job 4, Deployment 5")
    for config in named(objs, "ConfigMap", INIT_SQL):
        if wave(config) > waves["PostgresCluster"]:
            problems.append(f"{INIT_SQL} comes after the PostgresCluster that reads it")
    return problems


def cluster_problems(objs: list[Obj]) -> Problems:
    """The PostgresCluster: PostgreSQL 17 from a pinned image, users as the pods expect them, the owner
    made the database owner once, no per-user schema."""
    clusters = objects(objs, "PostgresCluster")
    if len(clusters) != 1:
        return ["no single PostgresCluster"]
    spec = clusters[0]["spec"]
    problems = []
    if spec.get("postgresVersion") != 17:
        problems.append(f"postgresVersion {spec.get('postgresVersion')!r}, not 17 (the CNPG clusters' major)")
    if not PINNED_IMAGE.match(str(spec.get("image", ""))):
        problems.append(f"image {spec.get('image')!r} is not a pinned crunchy-postgres 17 image")
    users = {u["name"]: u for u in spec.get("users") or []}
    if set(users) != {OWNER, RUNTIME_ROLE}:
        problems.append(f"users {sorted(users)}, want {OWNER} and {RUNTIME_ROLE}")
    if users.get(OWNER, {}).get("databases") != ["chat"]:
        problems.append(f"{OWNER} must have exactly database chat (pgo writes its uri for it)")
    runtime = users.get(RUNTIME_ROLE, {})
    if runtime.get("databases"):
        problems.append(f"{RUNTIME_ROLE} has databases: pgo would GRANT ALL (CREATE) on them")
    for user in users.values():
        options = str(user.get("options", "")).upper()
        if any(re.search(rf"\b{power}\b", options) for power in POWERS):
            problems.append(f"{user['name']} has options {user['options']!r}")
    if annotations_of(clusters[0]).get(f"{PGO}/autoCreateUserSchema", "").lower() == "true":
        problems.append("autoCreateUserSchema: the tables would land in schema chatapi, not public")
    init = spec.get("databaseInitSQL") or {}
    configs = named(objs, "ConfigMap", init.get("name", ""))
    sql = (configs[0].get("data") or {}).get(init.get("key", ""), "") if configs else ""
    if "\\set ON_ERROR_STOP true" not in sql or f"ALTER DATABASE chat OWNER TO {OWNER};" not in sql:
        problems.append(
            f"databaseInitSQL does not make {OWNER} the owner of chat (since PostgreSQL 15 the "
            "migration could not create tables in schema public otherwise)"
        )
    return problems


def sizing_problems(cnpg: list[Obj], pgo: list[Obj]) -> Problems:
    """The PostgresCluster has the CNPG Cluster's instances, storage, resources and annotations."""
    source = one(cnpg, "Cluster", "chat-db-cnpg")
    target = one(pgo, "PostgresCluster", CLUSTER)
    (instances,) = target["spec"]["instances"]
    claim = instances["dataVolumeClaimSpec"]
    got = {
        "replicas": instances.get("replicas"),
        "storage": claim.get("resources", {}).get("requests", {}).get("storage"),
        "storageClass": claim.get("storageClassName"),
        "resources": instances.get("resources"),
        "annotations": annotations_of(target),
    }
    want = {
        "replicas": source["spec"]["instances"],
        "storage": source["spec"]["storage"]["size"],
        "storageClass": source["spec"]["storage"]["storageClass"],
        "resources": source["spec"]["resources"],
        "annotations": annotations_of(source),
    }
    problems = [
        f"{key}: {got[key]!r}, the CNPG Cluster has {want[key]!r}" for key in want if got[key] != want[key]
    ]
    # The CEL rules of the CRD (jsonschema does not evaluate x-kubernetes-validations).
    if not claim.get("accessModes"):
        problems.append("dataVolumeClaimSpec: missing accessModes")
    if got["storageClass"] != "longhorn":
        problems.append("the data volume is not on longhorn")
    return problems


def reference_problems(objs: list[Obj]) -> Problems:
    """The pods use pgo's secrets, host and CA; the NetworkPolicy pgo's pod label; nothing names a
    CNPG object any more."""
    problems = []
    job = one(objs, "Job", "chat-api-migrate")
    deployment = one(objs, "Deployment", "chat-api")
    problems += [f"Job: {p}" for p in mounted_file_problems(job, OWNER_SECRET, "uri", OWNER_URL_FILE)]
    problems += [
        f"Deployment: {p}"
        for p in mounted_file_problems(deployment, RUNTIME_SECRET, "password", PASSWORD_FILE)
    ]
    migrate = env_map(main_container(job))
    if migrate.get("CHAT_API_DB_RUNTIME_ROLE", {}).get("value") != RUNTIME_ROLE:
        problems.append(f"the migration does not grant to {RUNTIME_ROLE}")
    server = env_map(main_container(deployment))
    url = urllib.parse.urlsplit(server.get("DATABASE_URL", {}).get("value", ""))
    if (url.username, url.password, url.hostname, url.port, url.path) != (
        RUNTIME_ROLE,
        None,
        HOST,
        5432,
        "/chat",
    ):
        problems.append(f"the server's DATABASE_URL is not postgresql://{RUNTIME_ROLE}@{HOST}:5432/chat")
    if workload_references_secret(deployment, OWNER_SECRET):
        problems.append(f"the server pod references the owner's secret {OWNER_SECRET}")
    if workload_references_secret(job, RUNTIME_SECRET):
        problems.append("the migration Job references the runtime role's secret")
    policy = one(objs, "NetworkPolicy", "chat-api")
    database_rules = [
        rule
        for rule in policy["spec"]["egress"]
        if any(peer.get("podSelector", {}).get("matchLabels") == POD_LABEL for peer in rule.get("to", []))
    ]
    if len(database_rules) != 1 or database_rules[0].get("ports") != [{"protocol": "TCP", "port": 5432}]:
        problems.append(f"no single egress rule to the pods {POD_LABEL} on TCP 5432")
    text = yaml.safe_dump_all(objs)
    problems += [f"{word!r} is still in the render" for word in CNPG_WORDS if word in text]
    return problems


# The leaves the component changes in the objects both renders share; nothing else may move.
EXPECTED_CHANGES = {
    ("Job", "chat-api-migrate", "spec", "template", "spec", "volumes", 1, "secret", "secretName"),
    ("Job", "chat-api-migrate", "spec", "template", "spec", "volumes", 2, "secret", "secretName"),
    ("Deployment", "chat-api", "spec", "template", "spec", "volumes", 1, "secret", "secretName"),
    ("Deployment", "chat-api", "spec", "template", "spec", "volumes", 2, "secret", "secretName"),
    ("Deployment", "chat-api", "spec", "template", "spec", "containers", 0, "env", 5, "value"),
    (
        "NetworkPolicy",
        "chat-api",
        "spec",
        "egress",
        1,
        "to",
        0,
        "podSelector",
        "matchLabels",
        "cnpg.io/cluster",
    ),
    (
        "NetworkPolicy",
        "chat-api",
        "spec",
        "egress",
        1,
        "to",
        0,
        "podSelector",
        "matchLabels",
        f"{PGO}/cluster",
    ),
}
REMOVED = {("Cluster", "chat-db-cnpg"), ("SealedSecret", "chat-db-runtime")}
ADDED = {("PostgresCluster", CLUSTER), ("ConfigMap", INIT_SQL)}


def difference_problems(cnpg: list[Obj], pgo: list[Obj]) -> Problems:
    def key(obj: Obj) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    before = {key(o) for o in cnpg}
    after = {key(o) for o in pgo}
    if before - after != REMOVED or after - before != ADDED:
        return [f"removed {sorted(before - after)}, added {sorted(after - before)}"]
    changed = changed_leaves(
        [o for o in cnpg if key(o) not in REMOVED], [o for o in pgo if key(o) not in ADDED]
    )
    return (
        []
        if changed == EXPECTED_CHANGES
        else [f"unexpected changes: {sorted(changed ^ EXPECTED_CHANGES, key=str)}"]
    )


# ---- the pgo renders pass -------------------------------------------------------------------------


def test_component_replaces_the_cnpg_objects(pgo_overlay: tuple[str, list[Obj]]) -> None:
    assert objects_problems(*pgo_overlay) == []


def test_database_before_the_migration_before_the_server(pgo_overlay: tuple[str, list[Obj]]) -> None:
    assert wave_problems(pgo_overlay[1]) == []


def test_postgrescluster_users_image_and_owner(pgo_overlay: tuple[str, list[Obj]]) -> None:
    assert cluster_problems(pgo_overlay[1]) == []


def test_postgrescluster_sized_like_the_overlays_cnpg_cluster(
    pgo_overlay: tuple[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    name, objs = pgo_overlay
    assert sizing_problems(rendered[name], objs) == []


def test_prds_database_is_never_deleted_or_pruned(
    pgo_rendered: dict[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    """prd's Delete=false,Prune=false reaches the PostgresCluster (copied with the annotations)."""
    cluster = one(pgo_rendered["prd"], "PostgresCluster", CLUSTER)
    assert annotations_of(cluster)["argocd.argoproj.io/sync-options"] == "Delete=false,Prune=false"
    broken = copy.deepcopy(pgo_rendered["prd"])
    one(broken, "PostgresCluster", CLUSTER)["metadata"]["annotations"].pop("argocd.argoproj.io/sync-options")
    assert sizing_problems(rendered["prd"], pgo_rendered["prd"]) == []
    assert sizing_problems(rendered["prd"], broken) != []


def test_pods_and_network_policy_point_at_pgo(pgo_overlay: tuple[str, list[Obj]]) -> None:
    assert reference_problems(pgo_overlay[1]) == []


def test_tls_verify_full_with_the_pgo_ca(pgo_overlay: tuple[str, list[Obj]]) -> None:
    objs = pgo_overlay[1]
    assert tls_problems(objs, CA_SECRET) == []
    # The CNPG CA is gone: the same rule with CNPG's secret fails on the pgo render.
    assert tls_problems(objs) != []
    assert jwt_problems(objs) == []


def test_nothing_else_differs_from_the_cnpg_render(
    pgo_overlay: tuple[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    name, objs = pgo_overlay
    assert difference_problems(rendered[name], objs) == []


def test_postgrescluster_matches_the_crd_schema(
    pgo_overlay: tuple[str, list[Obj]], crd_schemas: CrdSchemas
) -> None:
    cluster = one(pgo_overlay[1], "PostgresCluster", CLUSTER)
    assert is_custom(cluster)
    assert crd_schemas.errors(cluster) == []
    for sealed in objects(pgo_overlay[1], "SealedSecret"):
        assert crd_schemas.errors(sealed) == []


def test_core_kinds_validate_strictly(pgo_overlay: tuple[str, list[Obj]]) -> None:
    core = [o for o in pgo_overlay[1] if not is_custom(o)]
    assert {o["kind"] for o in core} >= {"ConfigMap", "Job", "Deployment", "NetworkPolicy"}
    for obj in core:
        kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)


def test_the_tenant_project_allows_the_pgo_render(
    pgo_overlay: tuple[str, list[Obj]], argocd_entry_points: dict[str, list[Obj]]
) -> None:
    name, objs = pgo_overlay
    entry = argocd_entry_points[name]
    assert project_problems(one(entry, "AppProject", PROJECT), application(entry, name), objs, name) == []


@pytest.fixture(scope="module")
def engine() -> regorus.Engine:
    engine = regorus.Engine()
    for path in sorted(POLICY_DIR.glob("*.rego")):
        engine.add_policy_from_file(str(path))
    return engine


def deny(engine: regorus.Engine, obj: Obj) -> set[str]:
    engine.set_input_json(json.dumps(obj))
    return set(engine.eval_rule("data.main.deny"))


def test_pgo_render_passes_every_policy(engine: regorus.Engine, pgo_overlay: tuple[str, list[Obj]]) -> None:
    for obj in pgo_overlay[1]:
        assert deny(engine, obj) == set(), f"{obj['kind']}/{obj['metadata']['name']}"


# ---- ... and each invariant fails a broken copy ---------------------------------------------------

Mutation = Callable[[list[Obj]], None]


def pc(objs: list[Obj]) -> Obj:
    return one(objs, "PostgresCluster", CLUSTER)


def users(objs: list[Obj]) -> dict[str, Obj]:
    return {u["name"]: u for u in pc(objs)["spec"]["users"]}


def volume(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(v for v in pod_spec(one(objs, kind))["volumes"] if v["name"] == name)


def server_env(objs: list[Obj], name: str) -> Obj:
    return next(e for e in main_container(one(objs, "Deployment"))["env"] if e["name"] == name)


def set_wave(obj: Obj, value: str) -> None:
    obj["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = value


def put_back(objs: list[Obj], cnpg: list[Obj], kind: str, name: str) -> None:
    objs.append(copy.deepcopy(next(o for o in cnpg if o["kind"] == kind and o["metadata"]["name"] == name)))


# name: (the rule, given the pgo render and the CNPG one; the mutation of the pgo render)
Rule = Callable[[list[Obj], list[Obj]], Problems]
BREAKS: dict[str, tuple[Rule, Callable[[list[Obj], list[Obj]], None]]] = {
    "cnpg-cluster-kept": (
        lambda o, c: objects_problems("dev", o),
        lambda o, c: put_back(o, c, "Cluster", "chat-db-cnpg"),
    ),
    "runtime-sealed-secret-kept": (
        lambda o, c: objects_problems("dev", o),
        lambda o, c: put_back(o, c, "SealedSecret", "chat-db-runtime"),
    ),
    "jwt-sealed-secret-dropped": (
        lambda o, c: objects_problems("dev", o),
        lambda o, c: o.remove(next(x for x in o if x["metadata"]["name"] == "chat-api-jwt")),
    ),
    "no-postgrescluster": (lambda o, c: objects_problems("dev", o), lambda o, c: o.remove(pc(o))),
    "postgrescluster-other-namespace": (
        lambda o, c: objects_problems("dev", o),
        lambda o, c: pc(o)["metadata"].update(namespace="default"),
    ),
    "database-wave-4": (lambda o, c: wave_problems(o), lambda o, c: set_wave(pc(o), "4")),
    "database-wave-5": (lambda o, c: wave_problems(o), lambda o, c: set_wave(pc(o), "5")),
    "init-sql-after-database": (
        lambda o, c: wave_problems(o),
        lambda o, c: set_wave(one(o, "ConfigMap", INIT_SQL), "4"),
    ),
    "postgres-16": (lambda o, c: cluster_problems(o), lambda o, c: pc(o)["spec"].update(postgresVersion=16)),
    "image-unpinned": (lambda o, c: cluster_problems(o), lambda o, c: pc(o)["spec"].pop("image")),
    "image-major-only": (
        lambda o, c: cluster_problems(o),
        lambda o, c: pc(o)["spec"].update(
            image="registry.developers.crunchydata.com/crunchydata/crunchy-postgres:ubi9-17"
        ),
    ),
    "runtime-with-database": (
        lambda o, c: cluster_problems(o),
        lambda o, c: users(o)[RUNTIME_ROLE].update(databases=["chat"]),
    ),
    "runtime-superuser": (
        lambda o, c: cluster_problems(o),
        lambda o, c: users(o)[RUNTIME_ROLE].update(options="SUPERUSER"),
    ),
    "owner-other-database": (
        lambda o, c: cluster_problems(o),
        lambda o, c: users(o)[OWNER].update(databases=["postgres"]),
    ),
    "no-runtime-user": (
        lambda o, c: cluster_problems(o),
        lambda o, c: pc(o)["spec"].update(
            users=[u for u in pc(o)["spec"]["users"] if u["name"] != RUNTIME_ROLE]
        ),
    ),
    "no-init-sql": (lambda o, c: cluster_problems(o), lambda o, c: pc(o)["spec"].pop("databaseInitSQL")),
    "init-sql-without-owner": (
        lambda o, c: cluster_problems(o),
        lambda o, c: one(o, "ConfigMap", INIT_SQL)["data"].update({"init.sql": "\\set ON_ERROR_STOP true\n"}),
    ),
    "user-schema": (
        lambda o, c: cluster_problems(o),
        lambda o, c: pc(o)["metadata"]["annotations"].update({f"{PGO}/autoCreateUserSchema": "true"}),
    ),
    "other-replicas": (
        lambda o, c: sizing_problems(c, o),
        lambda o, c: pc(o)["spec"]["instances"][0].update(replicas=2),
    ),
    "other-storage": (
        lambda o, c: sizing_problems(c, o),
        lambda o, c: pc(o)["spec"]["instances"][0]["dataVolumeClaimSpec"]["resources"]["requests"].update(
            storage="1Gi"
        ),
    ),
    "no-access-modes": (
        lambda o, c: sizing_problems(c, o),
        lambda o, c: pc(o)["spec"]["instances"][0]["dataVolumeClaimSpec"].pop("accessModes"),
    ),
    "job-cnpg-uri": (
        lambda o, c: reference_problems(o),
        lambda o, c: volume(o, "Job", "database")["secret"].update(secretName="chat-db-cnpg-app"),
    ),
    "job-uri-other-key": (
        lambda o, c: reference_problems(o),
        lambda o, c: volume(o, "Job", "database")["secret"].update(
            items=[{"key": "password", "path": "uri"}]
        ),
    ),
    "server-cnpg-runtime-secret": (
        lambda o, c: reference_problems(o),
        lambda o, c: volume(o, "Deployment", "db-runtime")["secret"].update(secretName="chat-db-runtime"),
    ),
    "server-cnpg-host": (
        lambda o, c: reference_problems(o),
        lambda o, c: server_env(o, "DATABASE_URL").update(
            value="postgresql://chat-runtime@chat-db-cnpg-rw:5432/chat"
        ),
    ),
    "server-fqdn-other-cluster": (
        lambda o, c: reference_problems(o),
        lambda o, c: server_env(o, "DATABASE_URL").update(
            value="postgresql://chat-runtime@other-primary:5432/chat"
        ),
    ),
    "server-owner-uri": (
        lambda o, c: reference_problems(o),
        lambda o, c: pod_spec(one(o, "Deployment"))["volumes"].append(
            {"name": "owner", "secret": {"secretName": OWNER_SECRET}}
        ),
    ),
    "egress-cnpg-label": (
        lambda o, c: reference_problems(o),
        lambda o, c: one(o, "NetworkPolicy")["spec"]["egress"][1]["to"][0]["podSelector"].update(
            matchLabels={"cnpg.io/cluster": "chat-db-cnpg"}
        ),
    ),
    "egress-other-port": (
        lambda o, c: reference_problems(o),
        lambda o, c: one(o, "NetworkPolicy")["spec"]["egress"][1].update(
            ports=[{"protocol": "TCP", "port": 5433}]
        ),
    ),
    "cnpg-ca": (
        lambda o, c: tls_problems(o, CA_SECRET),
        lambda o, c: volume(o, "Job", "db-ca")["secret"].update(secretName="chat-db-cnpg-ca"),
    ),
    "server-verify-ca-only": (
        lambda o, c: tls_problems(o, CA_SECRET),
        lambda o, c: server_env(o, "PGSSLMODE").update(value="verify-ca"),
    ),
    "other-change": (
        lambda o, c: difference_problems(c, o),
        lambda o, c: one(o, "Deployment")["spec"].update(replicas=2),
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_rule_rejects_its_broken_copy(
    name: str, pgo_rendered: dict[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    rule, mutate = BREAKS[name]
    cnpg = rendered["dev"]
    objs = copy.deepcopy(pgo_rendered["dev"])
    assert rule(objs, cnpg) == [], "the unbroken render passes"
    mutate(objs, cnpg)
    assert rule(objs, cnpg) != []


def test_crd_schema_rejects_broken_postgresclusters(
    pgo_rendered: dict[str, list[Obj]], crd_schemas: CrdSchemas
) -> None:
    cases: list[tuple[Callable[[Obj], Any], str]] = [
        (lambda o: o["spec"].update(postgresVersion="17"), "not of type"),
        (lambda o: o["spec"].pop("postgresVersion"), "postgresVersion"),
        (lambda o: o["spec"]["users"][1].update(database=["chat"]), "database"),  # typo of databases
        (lambda o: o["spec"]["users"][1].update(name="Chat_Runtime"), "does not match"),
        (lambda o: o["spec"]["instances"][0].update(replica=3), "replica"),
        (lambda o: o["spec"]["instances"][0].pop("dataVolumeClaimSpec"), "dataVolumeClaimSpec"),
        (lambda o: o["spec"]["users"][0].update(password={"type": "Hex"}), "is not one of"),
    ]
    for mutate, expected in cases:
        obj = copy.deepcopy(one(pgo_rendered["prd"], "PostgresCluster", CLUSTER))
        mutate(obj)
        errors = crd_schemas.errors(obj)
        assert any(expected in error for error in errors), (expected, errors)


def test_policies_cover_the_postgrescluster(
    engine: regorus.Engine, pgo_rendered: dict[str, list[Obj]]
) -> None:
    """The CNPG-only rules extended: the PostgresCluster's wave, and pgo's owner secret in the server."""
    cluster = copy.deepcopy(one(pgo_rendered["prd"], "PostgresCluster", CLUSTER))
    set_wave(cluster, "4")
    assert any(m.startswith("[wave-database] ") for m in deny(engine, cluster))
    deployment = copy.deepcopy(one(pgo_rendered["prd"], "Deployment", "chat-api"))
    pod_spec(deployment)["volumes"].append({"name": "owner", "secret": {"secretName": OWNER_SECRET}})
    assert any(m.startswith("[server-no-owner-secret] ") for m in deny(engine, deployment))
    # The runtime role's pgo secret is no owner's.
    assert deny(engine, one(pgo_rendered["prd"], "Deployment", "chat-api")) == set()


# ---- pgo's uri reaches the service intact ----------------------------------------------------------

# pgo's ASCII password alphabet (internal/util/secrets.go, policyASCII); the component asks for
# AlphaNumeric, but a user who drops that gets these.
PGO_ASCII = "()*+,-./:;<=>?@[]^_{|}" + "ABCXYZabcxyz0189"


def go_userinfo_escape(value: str) -> str:
    """Go's url.UserPassword(...).String() (net/url shouldEscape, encodeUserPassword): unreserved
    characters and $&+,;= stay, '@', '/', '?', ':' and everything else are percent-encoded."""
    keep = set("-_.~$&+,;=")
    return "".join(
        c if c.isascii() and (c.isalnum() or c in keep) else "".join(f"%{b:02X}" for b in c.encode())
        for c in value
    )


def asyncpg_password(dsn: str) -> Any:
    _, params = connect_utils._parse_connect_dsn_and_args(
        dsn=dsn, host=None, port=None, user=None, password=None, passfile=None, database=None, ssl=None,
        service=None, servicefile=None, direct_tls=None, server_settings=None, target_session_attrs=None,
        krbsrvname=None, gsslib=None,
    )  # fmt: skip
    return params.password


def test_a_pgo_uri_with_an_ascii_password_reaches_asyncpg_intact() -> None:
    password = PGO_ASCII * 2
    uri = f"postgresql://{OWNER}:{go_userinfo_escape(password)}@{HOST}.product-team.svc:5432/chat"
    assert "+" in uri and ";" in uri, "the encoding leaves some reserved characters as they are"
    assert urllib.parse.unquote_plus(urllib.parse.urlsplit(uri).password or "") != password
    assert asyncpg_password(parse_database_url(uri).dsn) == password


# ---- pgo's SQL replayed on a real PostgreSQL --------------------------------------------------------


async def test_pgo_users_then_the_init_sql_let_the_migration_run(
    admin_url: str, pgo_rendered: dict[str, list[Obj]]
) -> None:
    """What pgo runs as postgres for these users (internal/postgres/databases.go and users.go:
    CREATE DATABASE, CREATE USER, ALTER ROLE ... PASSWORD, GRANT ALL PRIVILEGES ON DATABASE to users
    with databases only) leaves the database owned by postgres: since PostgreSQL 15 the owner user
    may not create tables in schema public, and `chat-api migrate` fails. The component's init SQL
    (made the owner) lets it migrate and grant the runtime role its rows."""
    suffix = uuid.uuid4().hex[:8]
    database, owner, runtime = f"pgo_chat_{suffix}", f"chatapi-{suffix}", f"chat-runtime-{suffix}"
    cluster = one(pgo_rendered["prd"], "PostgresCluster", CLUSTER)
    init = cluster["spec"]["databaseInitSQL"]
    sql = one(pgo_rendered["prd"], "ConfigMap", init["name"])["data"][init["key"]]
    statements = [line for line in sql.splitlines() if line and not line.startswith("\\")]
    assert statements == [f"ALTER DATABASE chat OWNER TO {OWNER};"]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        for user in (owner, runtime):
            await admin.execute(f'CREATE USER "{user}"')
            await admin.execute(f"ALTER ROLE \"{user}\" WITH  PASSWORD 'pw'")
        await admin.execute(f'GRANT ALL PRIVILEGES ON DATABASE "{database}" TO "{owner}"')
        owner_url = with_user(with_database(admin_url, database), owner, "pw")

        refused = run_migrate(owner_url, CHAT_API_DB_RUNTIME_ROLE=runtime)
        assert refused.returncode != 0, refused.stdout
        assert "permission denied for schema public" in refused.stdout, refused.stdout

        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{owner}"')
        done = run_migrate(owner_url, CHAT_API_DB_RUNTIME_ROLE=runtime)
        assert done.returncode == 0, done.stdout
        server = await asyncpg.connect(with_user(with_database(admin_url, database), runtime, "pw"))
        try:
            assert await server.fetchval("SELECT count(*) FROM rooms") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await server.execute("CREATE TABLE intruder (id int)")
        finally:
            await server.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for user in (owner, runtime):
            await admin.execute(f'DROP ROLE IF EXISTS "{user}"')
        await admin.close()


# ---- docs -------------------------------------------------------------------------------------------


def test_docs_say_how_to_switch_and_give_the_health_check() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert "pgo (Crunchy) instead of CloudNativePG" in docs
    assert f"- {COMPONENT}" in docs
    assert "resource.customizations.health.postgres-operator.crunchydata.com_PostgresCluster" in docs
    for word in (OWNER_SECRET, RUNTIME_SECRET, CA_SECRET, HOST, f"{PGO}/cluster: {CLUSTER}"):
        assert word in docs, word
    readme = (REPO / "README.md").read_text()
    assert "components/pgo" in readme
