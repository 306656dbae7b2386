"""The mhctl command's exit: statuses as `sys.exit(main())` gives them, output flushed, no teardown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mhd import __version__

ROOT = Path(__file__).resolve().parent.parent


def mhctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: output to a pipe is block-buffered (not under
    PYTHONUNBUFFERED, which some environments set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-m", "mhd.ctl", *args], capture_output=True, text=True,
                          cwd=ROOT, input=stdin, timeout=60, env=env)  # fmt: skip


def test_output_is_flushed_before_the_quick_exit(tmp_path: Path) -> None:
    """A pipe's output is block-buffered: without the flush, os._exit would drop it."""
    big = mhctl("import", "ipvsadm", "-", stdin="-A -t 10.0.0.1:80 -s mh\n" + "".join(
        f"-a -t 10.0.0.1:80 -r 10.1.{i // 250}.{i % 250 + 1}:80 -m -w 1\n" for i in range(2000)))  # fmt: skip
    assert big.returncode == 0, big.stderr
    assert big.stdout.count('address: "10.1.') == 2000
    assert mhctl("--version").stdout.strip() == f"mhctl {__version__}"


@pytest.mark.parametrize(
    ("args", "status"),
    [((), 2), (("check", "/nonexistent/mhd.yaml"), 2), (("--version",), 0), (("no-such-command",), 2)],
)
def test_exit_statuses_are_the_documented_ones(args: tuple[str, ...], status: int) -> None:
    assert mhctl(*args).returncode == status


def test_a_valid_config_checks_with_status_0(tmp_path: Path) -> None:
    cfg = tmp_path / "mhd.yaml"
    cfg.write_text((ROOT / "etc" / "mhd.yaml").read_text())
    done = mhctl("check", str(cfg))
    assert done.returncode == 0, done.stderr
