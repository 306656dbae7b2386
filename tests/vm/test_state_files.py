"""The state dir against a real daemon: damage while it runs changes nothing, damage at start stops
the start with exit 2 and the file named (issue 11, item 6)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import netns as nsh
import pytest
from configs import config, service
from daemon_proc import START_TIMEOUT, Daemon, wait_for


@pytest.fixture
def daemon(
    netns: nsh.NetnsFactory, tmp_path: Path, venv_python: str
) -> Iterator[tuple[Daemon, nsh.Topology]]:
    t = nsh.make_topology(netns("dir"), netns("cli"))
    d = Daemon.make(t.director, tmp_path, "mhd", venv_python, api_socket=tmp_path / "mhd.sock")
    d.config.write_text(
        config(
            service("dns", t.vip, 53, [t.rs(i) for i in (1, 2, 3)]),
            reconcile_interval="1s",
            api=f"{{listen: '', socket: '{d.api_socket}'}}",
        )
    )
    yield d, t
    d.kill()


def test_damaged_state_files_never_stop_a_running_daemon_and_stop_a_start(
    daemon: tuple[Daemon, nsh.Topology],
) -> None:
    d, t = daemon
    d.start()
    owned = (d.state / "owned.json").read_text()
    before = nsh.ipvsadm_save(t.director)
    # Both files damaged behind the daemon's back (before: the next pass ended it with exit 1).
    (d.state / "disabled.json").write_text("[1, 2, 3]")
    (d.state / "owned.json").write_text('{"not": "a list"}')
    time.sleep(3)  # three reconcile intervals
    assert d.alive() and nsh.ipvsadm_save(t.director) == before
    # A drain still works, and writes a valid disabled.json over the damaged one.
    status, _, body = d.request("POST", f"/v1/services/dns/servers/{t.rs(2)}:53/disable", unix=True)
    assert status == 200, body
    wait_for(lambda: f"{t.rs(2)}:53" not in nsh.ipvsadm_save(t.director), 30, "the drained server removed")
    assert json.loads((d.state / "disabled.json").read_text()) == {"dns": [f"{t.rs(2)}:53"]}
    assert d.stop() == 0
    drained = nsh.ipvsadm_save(t.director)

    # A start on the damaged owned.json: refused with exit 2 (no restart loop), file and fix named.
    refused = subprocess.run(
        ["ip", "netns", "exec", t.director, d.python, "-m", "mhd.daemon", "-c", str(d.config),
         "--state-dir", str(d.state)],
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert str(d.state / "owned.json") in refused.stderr and "Traceback" not in refused.stderr
    assert nsh.ipvsadm_save(t.director) == drained
    # Restored: it starts as before, the drain kept, with no write at all.
    (d.state / "owned.json").write_text(owned)
    d.start()
    assert "0 netlink writes at start" in d.text()
    assert nsh.ipvsadm_save(t.director) == drained
    assert d.stop() == 0
