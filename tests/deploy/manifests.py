"""Helpers for the deploy tests: render kustomize directories with kubectl, pick objects, read the
Dockerfile, validate custom resources against upstream CRD schemas."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.missing import missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
POLICY_DIR = DEPLOY / "policy"  # the Rego rules the rendered overlays must pass
OVERLAYS = ("dev", "prd")
IMAGE = "ghcr.io/product-team/chat-api"
Obj = dict[str, Any]

WAVE = "argocd.argoproj.io/sync-wave"
HOOK = "argocd.argoproj.io/hook"
HOOK_DELETE_POLICY = "argocd.argoproj.io/hook-delete-policy"

# Kinds that come from CustomResourceDefinitions: validated with jsonschema against ../shared/crds,
# everything else with kubernetes-validate.
CRD_FILES = {
    ("postgresql.cnpg.io", "Cluster"): "postgresql.cnpg.io_clusters.yaml",
    ("postgresql.cnpg.io", "Pooler"): "postgresql.cnpg.io_poolers.yaml",
    ("argoproj.io", "Application"): "argoproj.io_applications.yaml",
    (
        "argocd-image-updater.argoproj.io",
        "ImageUpdater",
    ): "argocd-image-updater.argoproj.io_imageupdaters.yaml",
    ("bitnami.com", "SealedSecret"): "bitnami.com_sealedsecrets.yaml",
    (
        "postgres-operator.crunchydata.com",
        "PostgresCluster",
    ): "postgres-operator.crunchydata.com_postgresclusters.yaml",
}

# What deploy/seal-secrets.sh replaces: valid base64 whose first two bytes announce an RSA block that
# fits, so the sealed-secrets controller tries its keys (none can decrypt it) instead of rejecting
# the value as malformed. Decoded: a 2-byte length, then this marker.
PLACEHOLDER_MARKER = b"PLACEHOLDER, NOT SEALED: run deploy/seal-secrets.sh ENV"
PLACEHOLDER = "ADdQTEFDRUhPTERFUiwgTk9UIFNFQUxFRDogcnVuIGRlcGxveS9zZWFsLXNlY3JldHMuc2ggRU5W"


def executable(name: str) -> str:
    """A tool installed by a wheel into this venv (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found beside {sys.executable} or on PATH (pip install the test extra)")
    return found


def kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize DIR`, parsed."""
    done = subprocess.run(
        [executable("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def group_of(obj: Obj) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def is_custom(obj: Obj) -> bool:
    return (group_of(obj), obj["kind"]) in CRD_FILES


def objects(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def wave(obj: Obj) -> int:
    value = annotations_of(obj).get(WAVE)
    assert isinstance(value, str), f"{obj['kind']}/{obj['metadata']['name']} has no {WAVE} string"
    return int(value)


def pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "Pod":
        return dict(obj["spec"])
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def pod_labels(obj: Obj) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"].get("labels") or {})


def containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(obj: Obj) -> Obj:
    found = pod_spec(obj)["containers"]
    assert len(found) == 1, f"{obj['kind']}/{obj['metadata']['name']}: expected one container"
    return dict(found[0])


def env_list(container: Obj) -> list[Obj]:
    return list(container.get("env") or [])


def env_value(container: Obj, name: str) -> Obj:
    for entry in env_list(container):
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"container {container['name']} has no env {name}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def overlay_images(kustomization: Path) -> list[Obj]:
    data = yaml.safe_load(kustomization.read_text())
    return list(data.get("images") or [])


# ---- $(VAR) expansion as the kubelet does it --------------------------------------------------------

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def references(value: str) -> list[str]:
    return _REFERENCE.findall(value)


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes expands $(VAR) only for variables defined before (envFrom, then earlier env entries);
    an unknown reference stays as it is."""
    return _REFERENCE.sub(lambda m: defined.get(m.group(1), m.group(0)), value)


# ---- CRD schemas ----------------------------------------------------------------------------------

LOOSE_METADATA: Obj = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _strict(schema: Any) -> Any:
    """The API server prunes fields a structural schema does not know (a typo vanishes silently), so
    the tests reject them instead: additionalProperties false wherever the schema lists properties and
    does not preserve unknown fields. jsonschema ignores the x-kubernetes-* keys otherwise."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@dataclass
class CrdSchemas:
    directory: Path
    _cache: dict[tuple[str, str, str], Obj] = field(default_factory=dict)

    def schema(self, obj: Obj) -> Obj:
        group, version = str(obj["apiVersion"]).split("/")
        key = (group, version, obj["kind"])
        if key not in self._cache:
            path = self.directory / CRD_FILES[(group, obj["kind"])]
            crd = yaml.safe_load(path.read_text())
            assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"], path
            versions = {v["name"]: v for v in crd["spec"]["versions"]}
            assert version in versions, f"{path.name} serves {sorted(versions)}, not {version}"
            assert versions[version].get("served", False), f"{path.name}: {version} is not served"
            schema = _strict(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = LOOSE_METADATA
            schema.setdefault("required", [])
            self._cache[key] = schema
        return self._cache[key]

    def errors(self, obj: Obj) -> list[str]:
        validator = jsonschema.Draft7Validator(self.schema(obj))
        return [
            f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]


# ---- Dockerfile -----------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> list[Stage]:
    """The Dockerfile's stages: line continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def dockerfile_cmd() -> list[str]:
    cmds = dockerfile_stages()[-1].all("CMD")
    assert len(cmds) == 1, "the final stage needs exactly one CMD"
    cmd = json.loads(cmds[0])
    assert isinstance(cmd, list) and all(isinstance(part, str) for part in cmd), "CMD must be exec form"
    return [str(part) for part in cmd]


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for args in dockerfile_stages()[-1].all("ENV"):
        for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
            env[pair[0]] = pair[1].strip('"')
    return env


def walk(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every leaf with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, (*path, index))
    else:
        yield path, value


def changed_leaves(before: list[Obj], after: list[Obj]) -> set[tuple[Any, ...]]:
    """(kind, name, *path) of every leaf that differs between two renders of the same objects."""

    def index(objs: list[Obj]) -> dict[tuple[str, str], dict[tuple[Any, ...], Any]]:
        return {(o["kind"], o["metadata"]["name"]): dict(walk(o)) for o in objs}

    old, new = index(before), index(after)
    assert old.keys() == new.keys(), "the objects differ, not only their fields"
    changed: set[tuple[Any, ...]] = set()
    for key in old:
        for path in old[key].keys() | new[key].keys():
            if old[key].get(path) != new[key].get(path):
                changed.add((*key, *path))
    return changed


def crds_dir_from_env() -> Path:
    return Path(os.environ.get("CHAT_API_CRDS_DIR") or REPO.parent / "shared" / "crds")


def require_crds_dir() -> Path:
    """CHAT_API_CRDS_DIR, default ../shared/crds beside the repository. A missing folder skips the test
    on a developer's machine (a fresh clone has no ../shared) and FAILS it in CI (`CI` set), which
    provides the folder: there the custom resources must never go unchecked."""
    directory = crds_dir_from_env()
    if not directory.is_dir():
        message = (
            f"CRD schema folder {directory} does not exist: set CHAT_API_CRDS_DIR to a folder holding "
            "the upstream CRDs (see docs/deploy.md, 'CRD schemas')"
        )
        missing(message)
    return directory
