"""What the daemon does to its process at start."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from mhd import ipvs
from mhd.daemon import Daemon, raise_fd_limit
from mhd.kernel import IpvsUnavailable
from mhd.netlink import NetlinkError

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


class FlakyDumps:
    """An IPVS client whose first dumps fail as the kernel can fail them under pressure."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def services(self) -> dict[object, object]:
        self.calls += 1
        if self.calls <= self.failures:
            raise NetlinkError(errno.ENOMEM, "Cannot allocate memory")
        return {}


def test_a_failed_first_dump_is_retried_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 11, found by the chaos run): one ENOMEM on the daemon's first dump ended it
    with a traceback. The dump is retried: health starts from it, so it is never guessed."""
    daemon = Daemon(str(tmp_path / "mhd.yaml"), str(tmp_path / "state"))
    daemon.client = FlakyDumps(failures=2)  # type: ignore[assignment]
    assert asyncio.run(daemon.first_dump()) == {}
    assert daemon.client.calls == 3  # type: ignore[attr-defined]
    assert sum("reading IPVS at start failed" in r.getMessage() for r in caplog.records) == 2


def test_a_stop_while_the_kernel_cannot_be_read_decides_nothing(tmp_path: Path) -> None:
    async def go() -> object:
        daemon = Daemon(str(tmp_path / "mhd.yaml"), str(tmp_path / "state"))
        daemon.client = FlakyDumps(failures=10**6)  # type: ignore[assignment]
        asyncio.get_running_loop().call_later(0.3, daemon.stop)
        return await daemon.first_dump()

    assert asyncio.run(go()) is None


def test_a_transient_error_looking_up_ipvs_is_not_reported_as_no_ipvs() -> None:
    """ENOMEM on the family lookup is a kernel error to retry, not 'the kernel has no IPVS'."""

    class Sock:
        async def family_id(self, name: str) -> int:
            raise NetlinkError(errno.ENOMEM, "Cannot allocate memory")

        def close(self) -> None:
            pass

    async def go(sock: Sock) -> None:
        with mock.patch.object(ipvs.IpvsClient, "__init__", lambda self: setattr(self, "sock", sock)):
            await ipvs.IpvsClient.open()

    with pytest.raises(NetlinkError) as raised:
        asyncio.run(go(Sock()))
    assert not isinstance(raised.value, IpvsUnavailable) and raised.value.code == errno.ENOMEM


def test_the_daemon_imports_only_what_its_first_pass_needs() -> None:
    """Under emulation every module costs tens of milliseconds of start, before the first write
    (issue 15): the API, the fleet side, the non-TCP checkers and the journal handler are imported
    later (after the first pass, at the first probe of their type, under systemd only)."""
    later = ["aiohttp", "numpy", "mhd.api", "mhd.announcer", "mhd.routes", "mhd.sysctl", "mhd.probing.exec",
             "mhd.probing.http", "mhd.probing.dns", "systemd.journal", "difflib"]  # fmt: skip
    code = f"import sys, mhd.daemon; print(' '.join(m for m in {later!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
