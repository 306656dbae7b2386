"""Fuzzing in CI (issue 11): mutated configs through the real loader and, for a sample, through
`mhctl check` as a subprocess. Every file gives a config or a ConfigError whose messages name a
place; `mhctl check` exits 0 or 2 and never prints a traceback. Bounded to a few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhd.config import reload as reload_module
from mhd.config.reload import ConfigReloader
from mhd.config.validate import load, loads
from mhd.config.yamlsource import ConfigError

REPO = Path(__file__).resolve().parent.parent

BASE = """\
reconcile-interval: 10s
state-dir: /var/lib/mhd
api: {listen: 127.0.0.1:9180, socket: /run/mhd/mhd.sock, socket-mode: "0660"}
kernel: {module: auto, mh-tab-index: 12}
defaults:
  protocol: tcp
  mh-port: true
  min-healthy: "50%"
  check: {type: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3}
services:
  - name: web
    address: 203.0.113.15
    port: 80
    check: {type: http, path: /healthz, expect-status: [200-399], body-regex: ok}
    servers:
      - {address: 10.234.79.11, weight: 2}
      - "10.234.79.14:80"
  - name: marked
    fwmark: 7
    family: ipv6
    check: {type: exec, command: [/bin/true, --quick]}
    servers:
      - {address: "2001:db8::21", port: 0}
"""

HOSTILE_SCALARS = [
    "!!int abc", "!!float abc", "!!int 0x", "!!bool abc", "!!timestamp abc", "!!timestamp 2001-12-14",
    "!!binary aGk=", "!!set {a}", "!!omap [a: 1]", "!foo bar", "!!python/object x", "!!str [1]",
    ".nan", ".inf", "-.inf", "!!float 1e400", "99999999999999999999999h", "1e400", "-1", "0", "0x1F",
    "0o17", "017", "1_000", "1:20", "2001-13-45", "~", "null", "yes", "no", "''", "[]", "{}", "[[[[1]]]]",
    "*undefined", "&a 1", "<<", "9" * 5000, "'\\x00'", '"\\0"', '"\\e"', '"\\u2028"', '"\\U0010FFFF"',
]  # fmt: skip
CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "\ufffe", "\t", "\r"]


def lines_of(text: str) -> list[str]:
    return text.split("\n")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """BASE with a few edits: a value replaced by a hostile scalar, characters inserted, an anchor
    and its aliases, deep nesting, or a line duplicated or dropped."""
    lines = lines_of(BASE)
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, len(lines) - 1))
        line = lines[n]
        kind = draw(st.sampled_from(["value", "insert", "anchor", "nest", "dup", "drop", "laughs"]))
        if kind == "value" and ": " in line:
            head = line[: line.index(": ") + 2]
            lines[n] = head + draw(st.sampled_from(HOSTILE_SCALARS))
        elif kind == "insert":
            at = draw(st.integers(0, len(line)))
            piece = draw(st.sampled_from(CONTROL) | st.text(min_size=1, max_size=3))
            lines[n] = line[:at] + piece + line[at:]
        elif kind == "anchor" and ": " in line:
            lines[n] = line.replace(": ", ": &x ", 1)
            m = draw(st.integers(0, len(lines) - 1))
            if ": " in lines[m]:
                lines[m] = lines[m][: lines[m].index(": ") + 2] + "*x"
        elif kind == "nest" and ": " in line:
            depth = draw(st.sampled_from([10, 63, 65, 200, 1500]))
            lines[n] = line[: line.index(": ") + 2] + "[" * depth + "1" + "]" * depth
        elif kind == "dup":
            lines.insert(n, line)
        elif kind == "drop":
            del lines[n]
        elif kind == "laughs":
            fan, depth = draw(st.integers(2, 9)), draw(st.integers(1, 4))
            bomb = [f"l0: &l0 [{', '.join(['x'] * fan)}]"]
            bomb += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, depth + 1)]
            lines[:0] = bomb
    return "\n".join(lines)


def check_loader(text: str) -> None:
    try:
        loads(text, "f.yaml")
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.line >= 1 and p.column >= 1, p
            assert "Located(" not in p.message and "Traceback" not in p.message, p


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_configs_give_a_config_or_a_config_error_with_a_place(text: str) -> None:
    check_loader(text)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#%@`?~ \n\tab01.") + CONTROL), max_size=120))
def test_yaml_punctuation_soup(text: str) -> None:
    check_loader(text)


@settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated())
def test_mhctl_check_exits_0_or_2_without_a_traceback(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mhd.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "mhd.ctl", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode in (0, 2), run.stderr
    assert "Traceback" not in run.stderr


def outcome(load_it: Callable[[], object]) -> object:
    try:
        return load_it()
    except ConfigError as exc:
        return [str(p) for p in exc.problems]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_a_piecewise_first_load_gives_what_the_full_load_gives(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    """The daemon's first load reads the services list a group at a time when it safely can
    (`mhd.config.reload._piecewise`); on mutated files it must give exactly the full load's config
    or its errors."""
    path = tmp_path_factory.mktemp("fuzz") / "mhd.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with mock.patch.object(reload_module, "_GROUP", 2):
        assert outcome(lambda: ConfigReloader().load(path)) == outcome(lambda: load(path))
