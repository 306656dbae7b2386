"""etc/bash-completion/mhctl in a real bash with Debian's bash-completion: what each prefix completes to,
and that it knows every command and option of mhctl's parser."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_client import make_daemon, running

from mhd.ctl.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "etc" / "bash-completion" / "mhctl"
LIBRARY = Path("/usr/share/bash-completion/bash_completion")

pytestmark = pytest.mark.skipif(
    not LIBRARY.exists(), reason="needs bash-completion (apt-get install bash-completion)"
)


def complete(line: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last word of `line` (a trailing space starts a new, empty word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = f"""
source {LIBRARY}
source {SCRIPT}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
_mhctl mhctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stderr == ""
    return sorted(w for w in done.stdout.splitlines() if w)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def test_commands_and_their_options_are_mhctls() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert complete("mhctl ") == sorted([*commands, "--version", "--help"])
    assert complete("mhctl st") == ["status"]
    for name, sub in commands.items():
        if name == "import":
            for source, inner in subcommands(sub).items():
                assert complete(f"mhctl import {source} -") == sorted([*options(inner), "--help"])
            continue
        assert complete(f"mhctl {name} -") == sorted([*options(sub), "--help"]), name
    assert complete("mhctl import ") == sorted(subcommands(commands["import"]))


def test_config_arguments_complete_as_files(tmp_path: Path) -> None:
    for name in ("mhd.yaml", "other.yml", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "conf.d").mkdir()
    assert complete("mhctl check ", tmp_path) == ["conf.d", "mhd.yaml", "other.yml"]
    assert complete("mhctl plan m", tmp_path) == ["mhd.yaml"]
    assert complete("mhctl plan mhd.yaml ", tmp_path) == []  # one file only
    assert complete("mhctl table web --config n", tmp_path) == ["notes.txt"]
    assert complete("mhctl import keepalived n", tmp_path) == ["notes.txt"]
    assert complete("mhctl apply --state-dir ", tmp_path) == ["conf.d"]


def test_services_and_servers_come_from_the_running_daemon(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mhctl").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mhd.ctl "$@"\n')
    (bin_dir / "mhctl").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "MHCTL_COMPLETION_TIMEOUT": "20",
    }
    sock = tmp_path / "mhd.sock"
    assert complete(f"mhctl table --socket {sock} ", env=env) == []  # not running: nothing, no error
    with running(make_daemon(tmp_path)):
        assert complete(f"mhctl predict --socket {sock} ", env=env) == ["v6", "web"]
        assert complete(f"mhctl disable --socket {sock} w", env=env) == ["web"]
        assert complete(f"mhctl enable --socket {sock} web 10.0.0.", env=env) == [
            "10.0.0.1:80",
            "10.0.0.2:80",
        ]
        assert complete(f"mhctl enable --socket {sock} web 10.0.0.1:80 ", env=env) == []
