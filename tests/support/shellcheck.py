"""shellcheck, from Debian's package: the tests that lint shell scripts skip without it on a
developer's machine and fail without it in CI (`CI` set), where .ci/run installs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.missing import missing

MISSING = "shellcheck is missing: apt-get install shellcheck"


def require_shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        missing(MISSING)
    return found


def shellcheck_findings(script: Path) -> tuple[int, str]:
    """shellcheck's exit code and output for `script`: (0, "") when it finds nothing."""
    done = subprocess.run(
        [require_shellcheck(), str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stdout + done.stderr
