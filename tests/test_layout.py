"""The package's layout holds: imports flow one way along the path a flow takes, and the defaults of what
the model reads are defined once.

Every ``import`` of every module under ``plugin/dpack`` is read from its syntax tree, at module level and
inside functions alike (a function-level import is still a dependency), and checked against the rules
below; ``check`` is run on a deliberately broken tree too, so the test is known to fail when a rule is
broken.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
from conftest import DEFAULT_MODEL, ROOT

PKG = ROOT / "plugin" / "dpack"

# everything above the base and the traffic layer (with torch)
ABOVE_TRAFFIC = {
    "torch",
    "modelio",
    "prefix",
    "records",
    "zeek",
    "sinks",
    "serve",
    "offline",
    "config",
    "cli",
}
# what an area may not import (areas: a subpackage, or a top-level module)
FORBIDDEN = {
    # the base: plain data and files, importing nothing of dpack but each other
    "errors": {"*"},
    "verdict": {"*"},
    "fileio": {"*"},
    # packets, flows, labels: no model, no transport, no sink, no service, no command line
    "traffic": ABOVE_TRAFFIC,
    # the host-context stage: plain numbers over verdicts, the same
    "context": ABOVE_TRAFFIC,
    # model files (torch): for the models only
    "modelio": {"traffic", "prefix", "records", "zeek", "sinks", "serve", "offline", "config", "cli"},
    # models know no transport, sink, service, evaluation or command line
    "prefix": {"zeek", "sinks", "serve", "offline", "config", "cli", "records"},
    "records": {"zeek", "sinks", "serve", "offline", "config", "cli", "prefix"},
    # transports know no model and no sink
    "zeek": ABOVE_TRAFFIC - {"zeek"},
    # sinks import no torch and no model
    "sinks": ABOVE_TRAFFIC - {"sinks"},
    "offline": {"zeek", "sinks", "serve", "config", "cli"},
    "config": {"torch", "modelio", "prefix", "records", "zeek", "serve", "offline", "cli"},
    "serve": {"offline", "cli"},
    # learning a site (train, validate, report): offline work that dpack serve's learner runs in a process
    "learn": {"zeek", "sinks", "serve", "config", "cli"},
}
BASE = {"errors", "verdict", "fileio"}
# the prefix function and what it imports: no torch, no transport
PREFIX_FUNCTION = "traffic.encode"
NEVER_UNDER_PREFIX_FUNCTION = {"torch", "websockets", "broker"}


def modules(pkg: Path) -> dict[str, Path]:
    """dotted name under dpack -> file"""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(pkg).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """What a module imports: dpack modules by their dotted name under dpack, others by their top name."""
    pkg_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.add(a.name[len("dpack.") :] if a.name.startswith("dpack.") else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if mod == "dpack" or mod.startswith("dpack."):
                    base = mod[len("dpack.") :] if mod != "dpack" else ""
                else:
                    out.add(mod.split(".")[0])
                    continue
            else:
                up = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                base = ".".join([*up, *(node.module.split(".") if node.module else [])])
            for a in node.names:  # ``from .x import y``: y may be a module of its own
                full = f"{base}.{a.name}" if base else a.name
                out.add(full if full in known else (base or "__init__"))
    return out


def area(mod: str) -> str:
    return mod.split(".")[0]


def check(pkg: Path) -> list[str]:
    """Every broken rule, as a line."""
    mods = modules(pkg)
    known = set(mods)
    graph = {m: imports(m, p, known) for m, p in mods.items()}
    broken = []
    for m, deps in graph.items():
        forbidden = FORBIDDEN.get(area(m), set())
        for d in sorted(deps):
            if d in known:
                if area(d) == area(m) or d == "__init__":
                    continue
                if "*" in forbidden and d not in BASE:
                    broken.append(f"{m} imports {d}: the base imports only the base")
                elif area(d) in forbidden:
                    broken.append(f"{m} imports {d}")
            elif d in forbidden:
                broken.append(f"{m} imports {d}")
    # the prefix function, transitively
    seen, todo = set(), [PREFIX_FUNCTION]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for d in graph.get(m, ()):
            if d in NEVER_UNDER_PREFIX_FUNCTION:
                broken.append(f"{PREFIX_FUNCTION} reaches {d} (through {m})")
            elif d in known:
                todo.append(d)
    # no cycles among modules, function-level imports included
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d not in known or d == m:
                continue
            if state.get(d) == 1:
                broken.append("cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return broken


def test_imports_flow_one_way():
    assert check(PKG) == []


@pytest.mark.parametrize(
    "module, line, expect",
    [
        ("sinks/siem.py", "from ..prefix.model import DPackNet", "sinks.siem imports prefix.model"),
        ("traffic/flows.py", "import torch", "traffic.flows imports torch"),
        ("zeek/codec.py", "from ..prefix.scorer import Scorer", "zeek.codec imports prefix.scorer"),
        ("traffic/packets.py", "from .encode import PrefixSpec", "cycle"),  # encode imports packets
        ("verdict.py", "from .traffic.flows import FlowSample", "the base imports only the base"),
    ],
)
def test_a_deliberate_violation_is_caught(tmp_path, module, line, expect):
    broken = tmp_path / "dpack"
    shutil.copytree(PKG, broken)
    target = broken / module
    src = target.read_text()
    # inside a function: a function-level import counts as much as a module-level one
    target.write_text(src + f"\n\ndef _violation():\n    {line}\n")
    found = check(broken)
    assert any(expect in b for b in found), found


def test_defaults_of_what_the_model_reads_are_defined_once():
    """The library's defaults (traffic.encode) are what the CLI, the config, Zeek and the shipped model use."""
    from dpack.cli import build_parser
    from dpack.config import ExportConfig
    from dpack.prefix.model import ModelConfig
    from dpack.prefix.modelfile import load_model
    from dpack.traffic.encode import (
        DEFAULT_BYTES,
        DEFAULT_MAX_WAIT,
        DEFAULT_PACKETS,
        DEFAULT_POLICY,
        PrefixSpec,
    )

    assert PrefixSpec() == PrefixSpec(
        DEFAULT_PACKETS, DEFAULT_BYTES, DEFAULT_POLICY, max_wait=DEFAULT_MAX_WAIT
    )
    assert ExportConfig().spec() == PrefixSpec()
    assert (ModelConfig().n_packets, ModelConfig().n_bytes) == (DEFAULT_PACKETS, DEFAULT_BYTES)
    args = build_parser().parse_args(["train", "x.pcap", "--out", "m.pt"])
    assert (args.packets, args.bytes, args.policy) == (DEFAULT_PACKETS, DEFAULT_BYTES, DEFAULT_POLICY)
    assert load_model(DEFAULT_MODEL).spec == PrefixSpec()
    main = (ROOT / "zeek_scripts" / "main.zeek").read_text()
    zeek = dict(re.findall(r"^\toption (packets|packet_bytes|policy|max_wait) = (.+?);", main, re.M))
    assert zeek == {
        "packets": str(DEFAULT_PACKETS),
        "packet_bytes": str(DEFAULT_BYTES),
        "policy": f'"{DEFAULT_POLICY}"',
        "max_wait": f"{DEFAULT_MAX_WAIT:g}sec",
    }
