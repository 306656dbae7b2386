"""What the daemon does to its process at start."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mhd.daemon import raise_fd_limit

REPO = Path(__file__).resolve().parent.parent


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        new_soft, new_hard = raise_fd_limit()
        assert new_hard == hard
        assert new_soft > low and (new_soft == hard or hard == resource.RLIM_INFINITY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    "text",
    ["services: []\nreconcile-interval: !!int abc\n", "services: []\nreconcile-interval: !!timestamp abc\n",
     "services: []\nreconcile-interval: .nan\n"],
)  # fmt: skip
def test_mhd_refuses_an_invalid_file_at_start_with_exit_2_and_no_traceback(tmp_path: Path, text: str) -> None:
    """Exit 2 (invalid input), not 1: systemd's RestartPreventExitStatus=2 then stops retrying a file
    that cannot work, and the journal shows the line to fix."""
    path = tmp_path / "mhd.yaml"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "mhd.daemon", "-c", str(path), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"{path}:2:21: reconcile-interval: " in run.stderr and "Traceback" not in run.stderr
