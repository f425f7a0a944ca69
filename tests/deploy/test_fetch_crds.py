"""scripts/fetch-crds.sh, which CI runs to get the upstream CRDs the deploy tests validate against
(they are not in this repository). No internet here, so: shellcheck, its pins against the copies in
CHAT_API_CRDS_DIR (sha256, provenance), and a run against a file:// mirror of those copies."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.manifests import CRD_FILES, REPO
from tests.support.shellcheck import shellcheck_findings

SCRIPT = REPO / "scripts" / "fetch-crds.sh"
# The CRD files the shared folder's README names; the deploy tests of the parallel changes use the
# pgo and sealed-secrets ones beside CRD_FILES.
SHARED_FILES = {
    *CRD_FILES.values(),
    "postgres-operator.crunchydata.com_postgresclusters.yaml",
    "bitnami.com_sealedsecrets.yaml",
}


@dataclass(frozen=True)
class Pin:
    file: str
    repository: str
    commit: str
    path: str
    sha256: str


def pins() -> list[Pin]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = re.findall(
        r"^crd\s+(\S+)\s+([\w.-]+/[\w.-]+)\s+([0-9a-f]+)\s+(\S+)\s+([0-9a-f]{64})\s*$", text, re.MULTILINE
    )
    calls = [line for line in text.splitlines() if line.startswith("crd ")]
    assert len(found) == len(calls), "every `crd` line needs FILE OWNER/REPO COMMIT PATH SHA256"
    return [Pin(*match) for match in found]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(dest: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}
    return subprocess.run(
        ["bash", str(SCRIPT), str(dest)],
        env={**env, "CRDS_BASE_URL": base_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mirror(root: Path, crds_dir: Path) -> Path:
    """raw.githubusercontent.com's layout (OWNER/REPO/COMMIT/PATH) with the shared copies in it."""
    for pin in pins():
        target = root / pin.repository / pin.commit / pin.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crds_dir / pin.file, target)
    return root


def test_shellcheck_finds_nothing() -> None:
    assert shellcheck_findings(SCRIPT) == (0, "")


def test_it_fetches_every_crd_the_tests_need_once() -> None:
    files = [pin.file for pin in pins()]
    assert len(files) == len(set(files))
    assert set(files) == SHARED_FILES
    assert set(CRD_FILES.values()) <= set(files)


def test_every_file_is_pinned_to_a_commit_of_raw_githubusercontent() -> None:
    text = SCRIPT.read_text()
    assert "${CRDS_BASE_URL:-https://raw.githubusercontent.com}" in text
    assert '"$base/$repository/$commit/$path"' in text
    for pin in pins():
        # A commit id, never a branch or tag (which move): 7 to 40 hex digits.
        assert re.fullmatch(r"[0-9a-f]{7,40}", pin.commit), pin
        assert not pin.path.startswith("/") and ".." not in pin.path, pin


def test_checksums_match_the_shared_copies(crds_dir: Path) -> None:
    for pin in pins():
        assert sha256(crds_dir / pin.file) == pin.sha256, pin.file


def test_commits_are_the_ones_the_shared_readme_names(crds_dir: Path) -> None:
    readme = crds_dir / "README.md"
    if not readme.is_file():  # a folder fetched by the script itself has no README
        pytest.skip(f"{readme} is missing")
    named: dict[str, tuple[str, str]] = {}
    for files, repository, commit in re.findall(
        r"^- (.+?) — ([\w.-]+/[\w.-]+)[^,]*,.*?commit (\w+)", readme.read_text(), re.MULTILINE
    ):
        for file in files.split(", "):
            named[file] = (repository, commit)
    assert set(named) == SHARED_FILES
    for pin in pins():
        repository, commit = named[pin.file]
        assert pin.repository == repository, pin
        # The README gives short ids; a full id in the script must extend it.
        assert pin.commit.startswith(commit) or commit.startswith(pin.commit), pin


def test_a_run_downloads_checks_and_names_every_file(tmp_path: Path, crds_dir: Path) -> None:
    base = mirror(tmp_path / "mirror", crds_dir)
    dest = tmp_path / "crds"
    done = run(dest, base.as_uri())
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(SHARED_FILES)  # no .part left over
    for pin in pins():
        assert (dest / pin.file).read_bytes() == (crds_dir / pin.file).read_bytes()


def test_a_file_with_another_checksum_fails_the_run_and_is_not_kept(tmp_path: Path, crds_dir: Path) -> None:
    base = mirror(tmp_path / "mirror", crds_dir)
    pin = next(p for p in pins() if p.file == "argoproj.io_applications.yaml")
    tampered = base / pin.repository / pin.commit / pin.path
    tampered.write_text(tampered.read_text().replace("Application", "Applicatio", 1))
    dest = tmp_path / "crds"
    done = run(dest, base.as_uri())
    assert done.returncode == 1
    assert f"{pin.file} from" in done.stderr and "expected" in done.stderr
    assert not (dest / pin.file).exists()
    assert not list(dest.glob(".*.part"))


def test_a_missing_file_fails_the_run(tmp_path: Path, crds_dir: Path) -> None:
    base = mirror(tmp_path / "mirror", crds_dir)
    pin = pins()[0]
    (base / pin.repository / pin.commit / pin.path).unlink()
    done = run(tmp_path / "crds", base.as_uri())
    assert done.returncode == 1
    assert "could not download" in done.stderr


def test_it_needs_a_destination() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "usage" in done.stderr
