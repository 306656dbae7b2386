"""The daemon against a real kernel: drift repair, reloads (good and broken), stop, restart."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import netns as nsh
import pytest
from configs import dns_config
from daemon_proc import START_TIMEOUT, Daemon, wait_for


@pytest.fixture
def daemon(
    netns: nsh.NetnsFactory, tmp_path: Path, venv_python: str
) -> Iterator[tuple[Daemon, nsh.Topology]]:
    t = nsh.make_topology(netns("dir"), netns("cli"))
    d = Daemon.make(t.director, tmp_path, "mhd", venv_python)
    yield d, t
    d.kill()


def test_daemon_lifecycle(daemon: tuple[Daemon, nsh.Topology], report) -> None:
    d, t = daemon
    servers = {t.rs(i): 1 for i in range(1, 6)}
    d.config.write_text(dns_config(t.vip, servers, reconcile_interval="1s"))
    t0 = time.monotonic()
    d.start()
    report(f"daemon start to ready: {time.monotonic() - t0:.1f}s")
    expected = nsh.ipvsadm_save(t.director)
    assert expected.count("-a -u") == 5

    # Drift: someone deletes a destination and changes a weight; the daemon puts both back.
    nsh.ipvsadm(t.director, "-d", "-u", f"{t.vip}:53", "-r", f"{t.rs(2)}:53")
    nsh.ipvsadm(t.director, "-e", "-u", f"{t.vip}:53", "-r", f"{t.rs(4)}:53", "-m", "-w", "9")
    wait_for(lambda: nsh.ipvsadm_save(t.director) == expected, 30, "drift repaired")
    # Someone deletes the whole service.
    nsh.ipvsadm(t.director, "-D", "-u", f"{t.vip}:53")
    wait_for(lambda: nsh.ipvsadm_save(t.director) == expected, 30, "service re-created")

    # A broken file on SIGHUP: every error logged, nothing changes, the daemon keeps running.
    good = d.config.read_text()
    d.config.write_text(good.replace("weight: 1", "weight: 0", 1) + "bogus-key: 1\n")
    d.signal(signal.SIGHUP)
    log = d.wait_log("reload rejected")
    assert "weight 0 is not allowed" in log and "unknown key 'bogus-key'" in log
    time.sleep(2.5)  # two reconcile intervals
    assert nsh.ipvsadm_save(t.director) == expected

    # A good edit on SIGHUP: a weight change, applied in place (same list order).
    d.config.write_text(dns_config(t.vip, servers, weights={t.rs(3): 5}, reconcile_interval="1s"))
    d.signal(signal.SIGHUP)
    edited = expected.replace(f"-r {t.rs(3)}:53 -m -w 1", f"-r {t.rs(3)}:53 -m -w 5")
    wait_for(lambda: nsh.ipvsadm_save(t.director) == edited, 30, "weight edit applied")

    # SIGTERM: exit 0 and IPVS left exactly as it is.
    assert d.stop() == 0
    assert nsh.ipvsadm_save(t.director) == edited

    # Restart with the same config: adopts the kernel state, zero netlink writes.
    d.start()
    assert "0 netlink writes at start" in d.text()
    assert nsh.ipvsadm_save(t.director) == edited
    assert d.stop() == 0


def test_second_daemon_on_the_same_state_dir_is_refused(daemon: tuple[Daemon, nsh.Topology]) -> None:
    d, t = daemon
    d.config.write_text(dns_config(t.vip, [t.rs(1)], reconcile_interval="1s"))
    d.start()
    other = subprocess.run(
        ["ip", "netns", "exec", t.director, d.python, "-m", "mhd.daemon", "-c", str(d.config),
         "--state-dir", str(d.state)],
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip
    assert other.returncode == 1
    assert "is in use by another mhd" in other.stderr
    assert d.stop() == 0


def test_reload_storm_and_kill_9(daemon: tuple[Daemon, nsh.Topology]) -> None:
    """100 SIGHUPs in a row end in the right state with no duplicate operations; kill -9 and a
    restart perform zero netlink writes."""
    d, t = daemon
    servers = {t.rs(i): 1 for i in range(1, 9)}
    d.config.write_text(dns_config(t.vip, servers, reconcile_interval="30s"))
    d.start()
    before = nsh.ipvsadm_save(t.director)
    d.config.write_text(dns_config(t.vip, servers, weights={t.rs(4): 3}, reconcile_interval="30s"))
    for _ in range(100):
        d.signal(signal.SIGHUP)
    edited = before.replace(f"-r {t.rs(4)}:53 -m -w 1", f"-r {t.rs(4)}:53 -m -w 3")
    wait_for(lambda: nsh.ipvsadm_save(t.director) == edited, 60, "the storm's edit applied")
    time.sleep(3)
    log = d.text()
    assert log.count(f"edit-dest dns udp:{t.vip}:53 -> {t.rs(4)}:53") == 1, log
    assert "add-dest" not in log.split("started", 1)[1] and "delete-dest" not in log
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.start()
    assert "0 netlink writes at start" in d.text()
    assert nsh.ipvsadm_save(t.director) == edited
    assert d.stop() == 0
