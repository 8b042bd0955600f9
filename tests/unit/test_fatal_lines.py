"""Every fatal line carries its fix (issue 29, item 14).

The walk: every place the package builds a fatal error (``FatalError`` and its kinds,
``PoisonRowError``, ``UndecodableChange``) is found in the source, and the text it is
built from is read: string literals, f-strings, module constants (``POISON_FIX``), the
package's own functions that return the line (every return). Each must carry a fix: the
word "fix", "Repair", or a command to run (``cdc-bridge ...``, ``ALTER ...``, setting a
config key). A line built from something the walk cannot read (a variable) must be one
of KNOWN, whose builders are run here and checked the same way.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.session import BridgeState
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.bridge.supervisor import fatal_line, give_up
from cdc_bridge.config.load import parse_config
from cdc_bridge.sink.connect import stream_overlap
from cdc_bridge.source.protocol import ProtocolError
from cdc_bridge.source.setup import OutboxProblem

PACKAGE = Path(__file__).resolve().parents[2] / "cdc_bridge"
FATAL_ERRORS = {
    "FatalError",
    "PoisonRowError",
    "StreamLost",
    "StreamOverlap",
    "UndecodableChange",
    "ProtocolError",
}
# Errors whose line the supervisor completes with the fix (supervisor.fatal_line)
COMPLETED_BY_SUPERVISOR = {"ProtocolError": ProtocolError}
FIX = re.compile(
    r"\bfix\b|\brepair\b|cdc-bridge [a-z]|\bALTER (?:SYSTEM|ROLE|PUBLICATION)\b"
    r"|\bset [a-z_]+\.[a-z_.]+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Site:
    path: str  # relative to the package
    line: int
    argument: str  # the source of what the error is built from
    error: str  # the class built

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.argument}"


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE)): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


MODULES = _modules()
# Module-level names bound to text, and the package's functions, by name (across modules)
CONSTANTS: dict[str, ast.expr] = {}
FUNCTIONS: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
for _tree in MODULES.values():
    for _node in _tree.body:
        if isinstance(_node, ast.Assign) and len(_node.targets) == 1:
            target = _node.targets[0]
            if isinstance(target, ast.Name):
                CONSTANTS[target.id] = _node.value
    for _any in ast.walk(_tree):
        if isinstance(_any, ast.FunctionDef | ast.AsyncFunctionDef):
            FUNCTIONS.setdefault(_any.name, []).append(_any)


def text_of(node: ast.expr, seen: frozenset[str] = frozenset()) -> str | None:
    """The readable text an expression builds (holes as "{}"), or None if unreadable."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                # A hole: a constant's text counts, a function's line is only a part.
                inner = None if isinstance(value.value, ast.Call) else text_of(value.value, seen)
                parts.append("{}" if inner is None else inner)
            else:
                parts.append(text_of(value, seen) or "")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = text_of(node.left, seen), text_of(node.right, seen)
        if left is None and right is None:
            return None
        return (left or "{}") + (right or "{}")
    if isinstance(node, ast.Name) and node.id in CONSTANTS and node.id not in seen:
        return text_of(CONSTANTS[node.id], seen | {node.id})
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "format":
            return text_of(func.value, seen)
        if isinstance(func, ast.Name) and func.id in FUNCTIONS and func.id not in seen:
            returns = [
                text_of(ret.value, seen | {func.id})
                for definition in FUNCTIONS[func.id]
                for ret in ast.walk(definition)
                if isinstance(ret, ast.Return) and ret.value is not None
            ]
            if not returns or None in returns:
                return None
            # Every return must carry a fix: joined, each is checked on its own below.
            return "\n".join(text for text in returns if text is not None)
    return None


def fatal_sites() -> Iterator[tuple[Site, ast.expr]]:
    for path, tree in MODULES.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in FATAL_ERRORS or not node.args:
                continue
            argument = node.args[0]
            yield Site(path, node.lineno, ast.unparse(argument), node.func.id), argument


def without_fix(text: str) -> list[str]:
    return [part for part in text.split("\n") if not FIX.search(part)]


CONFIG = yaml.safe_dump(
    {
        "postgres": {"dsn": "postgresql://cdc@db1:5432/app"},
        "nats": {"servers": ["nats://n1:4222"], "stream": {"name": "S", "subjects": ["e.>"]}},
        "routes": [{"subject": "e.{event_type}"}],
    }
)


def _give_up_line() -> str:
    state = BridgeState(status=BridgeStatus(slot="s", stream="S"), metrics=Metrics())
    refused = psycopg.OperationalError(
        'connection to server at "db1", port 5432 failed: FATAL:  password authentication '
        'failed for user "cdc"'
    )
    line = give_up(refused, parse_config(CONFIG, env={}), state)
    assert line is not None
    return line


# Lines built from what the walk cannot read: (file, argument) -> a real line of the kind.
KNOWN: dict[tuple[str, str], Callable[[], str]] = {
    ("source/setup.py", "problems[0].line()"): lambda: OutboxProblem("k", "p", "f").line(),
    ("source/setup.py", "problem"): lambda: OutboxProblem("k", "p", "f").line(),
    ("bridge/supervisor.py", "fatal"): _give_up_line,
    (
        "sink/connect.py",
        "stream_overlap(wanted.name, wanted.subjects, others).line",
    ): lambda: stream_overlap("S", ["e.>"], [("T", ["e.x"])]).line,
}


def test_the_walk_finds_the_fatal_lines() -> None:
    sites = [site for site, _ in fatal_sites()]
    assert len(sites) >= 25, sites  # a walk that finds nothing proves nothing
    files = {site.path for site in sites}
    assert {"routing/dead_letters.py", "bridge/pipeline.py", "source/setup.py"} <= files


def test_every_fatal_line_carries_its_fix() -> None:
    missing: list[str] = []
    unreadable: list[str] = []
    for site, argument in fatal_sites():
        text = text_of(argument)
        if text is None:
            known = KNOWN.get((site.path, site.argument))
            if known is None:
                unreadable.append(str(site))
                continue
            text = known()
        if site.error in COMPLETED_BY_SUPERVISOR:
            text = fatal_line(COMPLETED_BY_SUPERVISOR[site.error](text))
        missing += [f"{site}\n    {part!r}" for part in without_fix(text)]
    assert not unreadable, "built from what the walk cannot read (add to KNOWN):\n" + "\n".join(
        unreadable
    )
    assert not missing, "fatal lines without a fix:\n" + "\n".join(missing)


def test_known_lines_are_still_in_the_code() -> None:
    found = {(site.path, site.argument) for site, _ in fatal_sites()}
    assert set(KNOWN) <= found, set(KNOWN) - found
