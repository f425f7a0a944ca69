"""Where the tests' helpers live: in helper modules (tests/support/), never a conftest or a test module."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def package_of(path: Path) -> str:
    """The package a module of the tests belongs to (a package's __init__ to itself)."""
    return ".".join(path.relative_to(REPO).parent.parts)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module `source` imports, lazy imports inside functions included; a `from X import name`
    counts as X and as X.name (the name may be a module); relative imports resolved in `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_conftest_or_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return name.split(".")[0] == "tests" and (last == "conftest" or last.startswith("test_"))


def test_no_module_of_the_tests_imports_a_conftest_or_a_test_module() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        names = imported_modules(path.read_text(), package_of(path))
        if bad := sorted(filter(is_conftest_or_test_module, names)):
            offenders[str(path.relative_to(REPO))] = bad
    assert offenders == {}


def test_the_import_check_sees_every_form_of_import() -> None:
    source = """
import tests.deploy.test_argocd as argocd
from tests.conftest import make_settings
from tests import conftest
from . import test_auth
from ..support.servers import serve

def lazy() -> None:
    from tests.web.conftest import ARTIFACTS
"""
    names = imported_modules(source, "tests.reliability")
    assert sorted(filter(is_conftest_or_test_module, names)) == [
        "tests.conftest",
        "tests.deploy.test_argocd",
        "tests.reliability.test_auth",
        "tests.web.conftest",
    ]
    assert "tests.support.servers" in names


def test_every_module_of_the_tests_opens_with_a_docstring() -> None:
    missing = [
        str(path.relative_to(REPO))
        for path in sorted(TESTS.rglob("*.py"))
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
