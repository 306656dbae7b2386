"""The layers of docs/architecture.md, enforced: who may import whom, and no import cycle.

Every import counts, at module level, inside functions and under TYPE_CHECKING alike: a lazy or
typing-only import is still a dependency a reader has to follow. A new module must be given a layer
in LAYERS, which is the point: its author decides where it belongs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mhd"

# Layer of each module, by the longest matching prefix ("mhd.config" covers mhd.config.*).
LAYERS: dict[str, str] = {
    "mhd": "core",  # the package itself: __version__
    "mhd.model": "core",
    "mhd.planner": "core",
    "mhd.health": "core",
    "mhd.membership": "core",
    "mhd.reports": "core",
    "mhd.announce": "core",
    "mhd.advice": "core",
    "mhd.sysctl_policy": "core",
    "mhd.config": "core",
    "mhd.maglev": "core",
    "mhd.importers": "core",
    "mhd.netlink": "kernel",
    "mhd.ipvs": "kernel",
    "mhd.reply_layout": "kernel",
    "mhd.kernel": "kernel",
    "mhd.state": "kernel",
    "mhd.routes": "kernel",
    "mhd.sysctl": "kernel",
    "mhd.sdnotify": "kernel",
    "mhd.probing": "probing",
    "mhd.reconcile": "shell",
    "mhd.daemon": "shell",
    "mhd.daemon_reload": "shell",
    "mhd.daemon_passes": "shell",
    "mhd.daemon_errors": "shell",
    "mhd.announcer": "shell",
    "mhd.api": "api",
    "mhd.ctl": "ctl",
}

# Which layers each layer may import. The core is pure; each edge sees the core and its own kind;
# the API reads the daemon through mhd.api.view, never the daemon itself; mhctl is a shell of its own
# (it runs a one-shot reconcile) but does not start the daemon or its API.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "kernel": {"core", "kernel"},
    "probing": {"core", "probing"},
    "api": {"core", "api"},
    "shell": {"core", "kernel", "probing", "shell", "api"},
    "ctl": {"core", "kernel", "shell", "ctl"},
}

# The remote client is copied into no other process, but it must start fast and stay importable on
# a machine with only the standard library (mhctl status on a bastion host).
STDLIB_ONLY = {"mhd.ctl.client"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: Collection[str] = ()) -> Iterator[str]:
    """Every module `name` imports (absolute names; `from pkg import mod` yields pkg.mod when it is
    one of `known`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}"


def layer(name: str) -> str | None:
    """The layer of `name`: its own entry or its package's ("mhd" itself covers only the package)."""
    prefixes = (p for p in LAYERS if name == p or (p != "mhd" and name.startswith(p + ".")))
    best = max(prefixes, key=len, default=None)
    return LAYERS[best] if best else None


def internal_imports(name: str, path: Path, known: Collection[str]) -> set[str]:
    return {m for m in imports(name, path, known) if m == "mhd" or m.startswith("mhd.")} - {name}


def layer_violations(root: Path = ROOT) -> list[str]:
    """Each import of a module under `root` that its layer may not make."""
    found = modules(root)
    wrong = []
    for name, path in found.items():
        mine = layer(name)
        for target in sorted(internal_imports(name, path, found)):
            theirs = layer(target)
            if mine is None or theirs not in ALLOWED[mine]:
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    return wrong


def test_every_module_has_a_layer() -> None:
    missing = [name for name in modules() if layer(name) is None]
    assert not missing, f"give these modules a layer in LAYERS (and docs/architecture.md): {missing}"


def test_imports_follow_the_layers() -> None:
    wrong = layer_violations()
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_the_api_never_imports_the_daemon() -> None:
    found = modules()
    for name, path in found.items():
        if name.startswith("mhd.api"):
            bad = {m for m in internal_imports(name, path, found) if m.startswith(("mhd.daemon", "mhd.reconcile"))}
            assert not bad, f"{name} imports {bad}: read the daemon through mhd.api.view"


def test_the_remote_client_uses_the_standard_library_only() -> None:
    for name in STDLIB_ONLY:
        path = modules()[name]
        outside = {
            m for m in imports(name, path) if m.split(".")[0] not in sys.stdlib_module_names | {"__future__"}
        }
        assert not outside, f"{name} imports {outside}"


def test_no_import_cycles() -> None:
    found = modules()
    graph = {name: internal_imports(name, path, found) for name, path in found.items()}
    # A package's __init__ is imported with each of its modules; it never imports them back.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The core importing the daemon, lazily inside a function, is reported; the daemon importing
    the core is not."""
    root = tmp_path / "mhd"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "daemon.py").write_text("from mhd import planner\n")
    (root / "planner.py").write_text("def f():\n    from mhd.daemon import Daemon\n    return Daemon\n")
    (root / "stray.py").write_text("")
    assert layer_violations(root) == [
        "mhd.planner (core) imports mhd.daemon (shell)",
    ]
    assert layer("mhd.stray") is None, "a module nobody placed has no layer"
