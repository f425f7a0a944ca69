"""The LogQL of the Grafana dashboards and the docs: where the queries are, what Grafana sends in
place of its variables, a parse with Grafana's own LogQL grammar (@grafana/lezer-logql, run by Node
from tests/deploy/logql), and the check that every field a query reads is one the service writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.loki import LokiEntry
from tests.support.missing import missing

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = {
    "loki": REPO / "deploy" / "observability" / "grafana-dashboard-loki.json",
    "prometheus": REPO / "deploy" / "observability" / "grafana-dashboard.json",
}
DOCS = REPO / "docs" / "observability.md"
PARSER_DIR = REPO / "tests" / "deploy" / "logql"
INSTALL = "tests/deploy/logql/install.sh"
MIN_NODE = 18

# What Grafana puts in place of each variable when it sends a query: the interval variables become a
# duration, a multi-value variable used with =~ becomes its values joined with |, a data link's
# ${__value.raw} the cell's value.
SAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
GRAFANA_VALUES = {
    "__auto": "1m",
    "__interval": "1m",
    "__rate_interval": "1m",
    "__range": "1h",
    "__from": "1767225600000",
    "__to": "1767247200000",
    "datasource": "P8E80F9AEF21F6940",
    "service": "chat-api",
    "namespace": "product-team|product-team-dev",
    "__value.raw": SAMPLE_TRACE_ID,
}
_VARIABLE = re.compile(
    r"\$\{(?P<braced>[\w.]+)(?::(?P<format>\w+))?\}|\$(?P<plain>\w+)|\[\[(?P<old>[\w.]+)\]\]"
)
_PLACEHOLDER = re.compile(r"<(\w+)>")  # the docs' <id>


class UnknownVariable(AssertionError):
    pass


def interpolate(text: str, values: dict[str, str] | None = None) -> str:
    """The text as Grafana sends it: each $var, ${var}, ${var:format} and [[var]] replaced. A variable
    Grafana would not know fails (Grafana would send it as it is, and Loki would refuse it)."""
    known = {**GRAFANA_VALUES, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        if name not in known:
            raise UnknownVariable(f"${name} is no variable of the dashboard or of Grafana: {text}")
        value = known[name]
        if match.group("format") == "percentencode":
            return urllib.parse.quote(value, safe="")
        return value

    return _VARIABLE.sub(replace, text)


@dataclass(frozen=True)
class Query:
    """One LogQL query as written: where it is and its template (Grafana variables still in it; for
    a data link, the link's URL)."""

    where: str
    template: str
    kind: str = "query"  # query, selector (a variable's stream), link (a data link to Explore)

    def sent(self, values: dict[str, str] | None = None) -> str:
        """The query as Grafana sends it to Loki (or, for a link, as Explore opens it)."""
        if self.kind == "link":
            (expr,) = explore_expressions(interpolate(self.template, values))
            return expr
        return interpolate(self.template, values)


def _datasource_type(node: dict[str, Any], fallback: str | None) -> str | None:
    source = node.get("datasource")
    return str(source.get("type")) if isinstance(source, dict) else fallback


def dashboard(name: str) -> dict[str, Any]:
    data = json.loads(DASHBOARDS[name].read_text())
    assert isinstance(data, dict)
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def data_link_urls(panel: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, url) of every data link of a panel: its defaults' and its overrides'."""
    config = panel.get("fieldConfig", {})
    for link in config.get("defaults", {}).get("links", []):
        yield "defaults", str(link["url"])
    for override in config.get("overrides", []):
        for prop in override.get("properties", []):
            if prop.get("id") == "links":
                for link in prop["value"]:
                    yield f"override {override['matcher'].get('options')}", str(link["url"])


def explore_expressions(url: str) -> list[str]:
    """The queries an (interpolated) Explore link opens: schemaVersion 1 `panes`, or the older
    `left`."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path.endswith("/explore"), f"not an Explore link: {url}"
    params = urllib.parse.parse_qs(parsed.query)
    if "panes" in params:
        panes = json.loads(params["panes"][0])
        return [str(q["expr"]) for pane in panes.values() for q in pane["queries"]]
    left = json.loads(params["left"][0])
    return [str(q["expr"]) for q in left["queries"]]


def loki_queries(board: dict[str, Any]) -> list[Query]:
    """Every LogQL query of a dashboard: the Loki targets of its panels, the stream selectors of its
    Loki variables, and the queries its data links open in Explore."""
    found = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and _datasource_type(variable, None) == "loki":
            stream = variable["query"].get("stream") if isinstance(variable["query"], dict) else None
            if stream:
                found.append(Query(f"variable {variable['name']}", stream, "selector"))
    for panel in panels(board):
        panel_type = _datasource_type(panel, None)
        for target in panel.get("targets", []):
            if _datasource_type(target, panel_type) == "loki":
                found.append(Query(f"panel {panel['title']!r} {target['refId']}", str(target["expr"])))
        for where, url in data_link_urls(panel):
            found.append(Query(f"panel {panel['title']!r} link ({where})", url, "link"))
    return found


def docs_queries(path: Path = DOCS) -> list[Query]:
    """Each line of the ```logql blocks of the docs (comments and blank lines skipped), with the
    placeholder <id> as a trace id."""
    found = []
    in_block = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = line.strip() == "```logql"
            continue
        if in_block and line.strip() and not line.strip().startswith("#"):
            text = line.strip().replace("<id>", SAMPLE_TRACE_ID)
            assert not _PLACEHOLDER.search(text), f"{path.name}:{number}: a placeholder other than <id>"
            found.append(Query(f"{path.name}:{number}", text))
    return found


# ---- the parser ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """What @grafana/lezer-logql made of a query (tests/deploy/logql/parse.mjs)."""

    text: str
    tree: str
    errors: list[dict[str, Any]]
    selectors: list[dict[str, Any]]  # {name, op, value}: the stream selector's matchers (index labels)
    filters: list[dict[str, Any]]  # {name, op, value, numeric}: label filters (after | )
    unwraps: list[str]
    groupings: list[str]
    line_filters: list[dict[str, Any]]  # {op, value}


def node() -> str | None:
    return os.environ.get("CHAT_API_TEST_NODE") or shutil.which("node")


def _pinned_version(package: str) -> str:
    lock = json.loads((PARSER_DIR / "package-lock.json").read_text())
    return str(lock["packages"][f"node_modules/{package}"]["version"])


def logql_parser_problem() -> str | None:
    """Why the parser cannot run here, or None."""
    executable = node()
    if executable is None:
        return "node is not installed (apt-get install nodejs npm)"
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30, check=False)
    version = done.stdout.strip().lstrip("v")
    if done.returncode != 0 or int(version.split(".")[0] or 0) < MIN_NODE:
        return f"{executable} is {version or 'broken'}, Node {MIN_NODE} or newer is needed"
    installed = PARSER_DIR / "node_modules" / "@grafana" / "lezer-logql" / "package.json"
    if not installed.is_file():
        return f"@grafana/lezer-logql is not installed in {PARSER_DIR} (run {INSTALL})"
    want = _pinned_version("@grafana/lezer-logql")
    got = json.loads(installed.read_text()).get("version")
    if got != want:
        return f"@grafana/lezer-logql {got} is installed, package-lock.json pins {want} (run {INSTALL})"
    return None


def require_logql_parser() -> None:
    """Skips without Node or the parser package on a developer's machine; fails in CI, which installs
    both (.ci/run runs tests/deploy/logql/install.sh)."""
    problem = logql_parser_problem()
    if problem:
        missing(f"the LogQL tests need Grafana's LogQL parser: {problem}")


def parse(texts: Iterable[str]) -> list[Parsed]:
    """Parses each LogQL text with @grafana/lezer-logql (one Node process for all of them)."""
    texts = list(texts)
    executable = node()
    assert executable is not None, "node is not installed"
    done = subprocess.run(
        [executable, str(PARSER_DIR / "parse.mjs")],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PARSER_DIR,
        check=False,
    )
    assert done.returncode == 0, f"parse.mjs failed:\n{done.stderr}"
    return [
        Parsed(
            text=text,
            tree=out["tree"],
            errors=out["errors"],
            selectors=out["selectors"],
            filters=out["filters"],
            unwraps=out["unwraps"],
            groupings=out["groupings"],
            line_filters=out["lineFilters"],
        )
        for text, out in zip(texts, json.loads(done.stdout), strict=True)
    ]


def syntax_problems(parsed: Parsed) -> list[str]:
    """A query Loki would refuse: error nodes in the tree, or not one whole LogQL expression."""
    problems = [f"syntax error near {e['near']!r} (at {e['from']})" for e in parsed.errors]
    if not parsed.tree.startswith("LogQL(Expr("):
        problems.append(f"not a LogQL expression: {parsed.tree[:80]}")
    if not parsed.selectors:
        problems.append("no stream selector")
    return problems


# ---- fields: does the service write what a query reads? ----------------------------------------------

# Source of the service: a line filter's text must be something it logs.
SOURCE = REPO / "chat_api"


def _matches(op: str, want: str, value: str) -> bool:
    if op in ("=", "=="):
        return value == want
    if op == "!=":
        return value != want
    if op == "=~":
        return re.fullmatch(want, value) is not None
    if op == "!~":
        return re.fullmatch(want, value) is None
    raise AssertionError(f"unknown matcher {op}")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def field_problems(parsed: Parsed, entries: list[LokiEntry]) -> list[str]:
    """Every field the query reads is written, with a usable value, by at least one of the entries
    (the service's records as Loki stores them): stream-selector labels are index labels and some
    entry's value matches; label filters name a label some entry has (an = or =~ filter: with a value
    that matches, a numeric filter: with numbers only); unwrap fields are numbers in every entry that
    has them; grouping labels exist; a line filter's text is in some line or in the service's source.
    Loki's own labels (__error__, ...) are skipped."""
    problems = []
    for matcher in parsed.selectors:
        name, op, want = matcher["name"], matcher["op"], matcher["value"]
        values = [e.labels[name] for e in entries if name in e.labels]
        if not values:
            problems.append(f"selector {name}: no record has the index label {name}")
        elif not any(_matches(op, want, v) for v in values):
            problems.append(f"selector {name}{op}{want!r}: matches none of {sorted(set(values))}")
    for label_filter in parsed.filters:
        name, op, want = label_filter["name"], label_filter["op"], label_filter["value"]
        if name.startswith("__"):
            continue
        values = [v for e in entries if (v := e.get(name)) is not None]
        if not values:
            problems.append(f"filter {name}: no record has the label {name}")
        elif label_filter["numeric"]:
            if not all(_is_number(v) for v in values):
                problems.append(f"filter {name} {op} {want}: not a number in {sorted(set(values))[:5]}")
        elif op in ("=", "=~") and not any(_matches(op, want, v) for v in values):
            problems.append(f"filter {name}{op}{want!r}: matches none of {sorted(set(values))[:10]}")
    for name in parsed.unwraps:
        values = [v for e in entries if (v := e.get(name)) is not None]
        if not values:
            problems.append(f"unwrap {name}: no record has the label {name}")
        elif not all(_is_number(v) for v in values):
            problems.append(f"unwrap {name}: not a number in {sorted(set(values))[:5]}")
    for name in parsed.groupings:
        if not any(e.get(name) is not None for e in entries):
            problems.append(f"by ({name}): no record has the label {name}")
    for line_filter in parsed.line_filters:
        text = line_filter["value"]
        in_lines = any(text in e.line for e in entries)
        if not in_lines and not any(text in path.read_text() for path in SOURCE.rglob("*.py")):
            problems.append(f"line filter {text!r}: in no line and nowhere in {SOURCE.name}/")
    return problems


def matching(parsed: Parsed, entries: list[LokiEntry]) -> list[LokiEntry]:
    """The entries a query without `or` and line filters selects: all its matchers and label filters
    hold (a simple evaluator for the tests' own link and docs queries)."""
    assert " or " not in parsed.text and not parsed.line_filters, parsed.text
    found = []
    for entry in entries:
        ok = all(
            m["name"] in entry.labels and _matches(m["op"], m["value"], entry.labels[m["name"]])
            for m in parsed.selectors
        ) and all(
            (v := entry.get(f["name"])) is not None and _matches(f["op"], f["value"], v)
            for f in parsed.filters
            if not f["numeric"] and not f["name"].startswith("__")
        )
        if ok:
            found.append(entry)
    return found
