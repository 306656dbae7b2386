"""mhctl status/reload/disable/enable against a real API server on a unix socket (and over TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDaemon
from servers import closed_port

from mhd.api.server import start
from mhd.ctl import main as ctl
from mhd.ctl.client import ClientError, Colors, format_status, use_color, watch
from mhd.health import CheckResult, Health
from mhd.state import StateDir

# A small copy of test_api's world, on a unix socket and TCP with a token.
CONFIG = """
reconcile-interval: 1s
api: {{listen: "127.0.0.1:{port}", socket: {socket}, token-file: {token}}}
defaults:
  check: {{type: tcp, interval: 2s, timeout: 1s}}
services:
  - {{name: web, address: 203.0.113.15, port: 80, servers: ["10.0.0.1:80", "10.0.0.2:80"]}}
  - {{name: v6, address: "2001:db8::80", port: 443, servers: ["[2001:db8:1::1]:443"]}}
"""


def make_daemon(tmp_path: Path) -> FakeDaemon:
    """10.0.0.2:80 refuses its checks (down, out of the kernel); every other server is up."""
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    text = CONFIG.format(port=closed_port(), socket=tmp_path / "mhd.sock", token=token)
    d = FakeDaemon(tmp_path, text)
    refused = CheckResult(False, 0.0021, "connection refused", time.time() - 3)
    d.set_health("web", "10.0.0.2:80", Health("down", 0, 3, 1, refused))
    d.refresh()
    return d


@contextlib.contextmanager
def running(d: FakeDaemon) -> Iterator[None]:
    """The daemon's main loop and its API in a thread: mhctl is a synchronous client."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def reconcile_once(only: set[Any] | None = None) -> None:
        d.refresh()
        for hook in d.hooks:
            hook()

    async def serve() -> None:
        d.reconcile_once = reconcile_once  # type: ignore[method-assign]
        close = await start(d)
        task = asyncio.create_task(d.main_loop())
        ready.set()
        await stop.wait()
        d.stop()
        await task
        await close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def mhctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_not_running_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "mhd.sock"
    code, out, err = mhctl(capsys, "status", "--socket", str(missing))
    assert code == 1 and out == ""
    assert err == f"mhctl: mhd is not running: cannot connect to {missing}: No such file or directory\n"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(missing))
    stale.close()
    code, _, err = mhctl(capsys, "reload", "--socket", str(missing))
    assert code == 1 and err.startswith("mhctl: mhd is not running:") and "Connection refused" in err


def test_status_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_daemon(tmp_path)
    sock = str(tmp_path / "mhd.sock")
    with running(d):
        code, out, _ = mhctl(capsys, "status", "--socket", sock)
        assert code == 0 and "\033[" not in out  # not a terminal: no colour
        lines = out.splitlines()
        assert any(line.startswith("web  tcp:203.0.113.15:80  mh  degraded  1/2 up") for line in lines)
        row = next(line for line in lines if "10.0.0.2:80" in line).split()
        assert row[:6] == ["10.0.0.2:80", "down", "no", "-", "1", "-"] and "FAILED" in row
        assert "connection refused" in out and "[2001:db8:1::1]:443" in out
        code, out, _ = mhctl(capsys, "status", "--json", "--socket", sock)
        doc = json.loads(out)
        assert [s["state"] for s in doc["services"]] == ["degraded", "ok"]


def test_disable_enable_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_daemon(tmp_path)
    sock = str(tmp_path / "mhd.sock")
    with running(d):
        assert mhctl(capsys, "disable", "web", "10.0.0.2", "--socket", sock)[:2] == (
            0,
            "web 10.0.0.2:80: disabled\n",
        )
        assert StateDir(tmp_path / "state").disabled() == {"web": {"10.0.0.2:80"}}
        code, out, _ = mhctl(capsys, "disable", "v6", "[2001:db8:1::1]:443", "--socket", sock)
        assert code == 0 and out == "v6 [2001:db8:1::1]:443: disabled\n"
        assert mhctl(capsys, "enable", "web", "10.0.0.2:80", "--socket", sock)[0] == 0
        code, _, err = mhctl(capsys, "enable", "web", "10.9.9.9", "--socket", sock)
        assert code == 2 and "has no server '10.9.9.9'" in err
    assert StateDir(tmp_path / "state").disabled() == {"v6": {"[2001:db8:1::1]:443"}}


def test_reload_ok_and_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_daemon(tmp_path)
    sock = str(tmp_path / "mhd.sock")
    config = tmp_path / "mhd.yaml"
    with running(d):
        code, out, _ = mhctl(capsys, "reload", "--socket", sock)
        assert code == 0 and out.startswith("reloaded (sha256 ")
        config.write_text(config.read_text() + "  - {name: Bad, address: 10.1.1.1, port: 0}\n")
        code, out, err = mhctl(capsys, "reload", "--socket", sock)
        assert code == 2 and out == ""
        lines = err.splitlines()
        assert lines[0].startswith("reload rejected") and len(lines) >= 3
        assert all(line.startswith(f"{config}:") for line in lines[1:])


def test_over_tcp_with_and_without_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_daemon(tmp_path)
    assert d.config is not None and d.config.api.listen is not None
    url = f"http://{d.config.api.listen}"
    with running(d):
        assert mhctl(capsys, "status", "--api", url)[0] == 0
        code, _, err = mhctl(capsys, "disable", "web", "10.0.0.1", "--api", url)
        assert code == 1 and "Authorization: Bearer" in err
        token = str(tmp_path / "token")
        assert mhctl(capsys, "disable", "web", "10.0.0.1", "--api", url, "--token-file", token)[0] == 0
        two_lines = tmp_path / "token-and-comment"
        two_lines.write_text(
            "\nt0ken\nrotated on Monday\n"
        )  # the first non-blank line, as the daemon reads it
        assert (
            mhctl(capsys, "enable", "web", "10.0.0.1", "--api", url, "--token-file", str(two_lines))[0] == 0
        )
        code, _, err = mhctl(capsys, "status", "--api", "ftp://x")
        assert code == 2 and "--api must be" in err


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())
    doc = {
        "daemon": {
            "version": "0", "pid": 1, "summary": "s", "kernel": None, "last_reload": None,
            "config": {"path": "p", "sha256": None, "loaded_at": None},
        },
        "services": [{
            "name": "a", "virtual": "tcp:10.0.0.1:80", "scheduler": "mh", "flags": [], "state": "panic",
            "servers_up": 0, "servers_total": 1, "servers_in_kernel": 1,
            "servers": [{
                "name": "10.1.1.1:80", "health": "down", "in_kernel": True, "disabled": False,
                "weight": 1, "stats": None, "last_check": None,
            }],
        }],
    }  # fmt: skip
    plain = format_status(doc, Colors(False))
    colored = format_status(doc, Colors(True))
    assert "\033[31mpanic\033[0m" in colored and "\033[" not in plain
    strip = colored
    for code in ("\033[31m", "\033[32m", "\033[1m", "\033[2m", "\033[0m"):
        strip = strip.replace(code, "")
    assert strip == plain  # colour never shifts the columns


def test_mhctl_does_not_import_aiohttp() -> None:
    code = "import sys, mhd.ctl.main; sys.exit('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- mhctl status --watch ------------------------------------------------------------------------------


def test_watch_redraws_until_ctrl_c_which_exits_0(tmp_path: Path) -> None:
    """A real mhctl process: frames keep coming until SIGINT, then it exits 0 without a traceback."""
    d = make_daemon(tmp_path)
    sock = str(tmp_path / "mhd.sock")
    with running(d):
        argv = [sys.executable, "-m", "mhd.ctl", "status", "--watch", "0.1", "--socket", sock]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        frames = []
        for line in proc.stdout:
            if line.startswith("every 0.1s: mhctl status  "):
                frames.append(line)
                if len(frames) == 3:
                    break
            assert "\033[" not in line  # not a terminal: no colour and no clearing
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert len(frames) == 3 and proc.returncode == 0 and err == ""


def test_watch_shows_a_lost_daemon_and_keeps_going_but_stops_on_a_usage_error() -> None:
    answers: list[Any] = [
        "frame one\n",
        ClientError("mhd is not running: cannot connect to /run/mhd/mhd.sock"),
        "frame three\n",
    ]
    sleeps: list[float] = []

    def frame() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if not answers:
            raise KeyboardInterrupt

    out = io.StringIO()
    watch(frame, 2.5, out, True, sleep)
    text = out.getvalue()
    assert text.count("every 2.5s: mhctl status") == 3 and sleeps == [2.5, 2.5, 2.5]
    assert text.index("frame one") < text.index("mhctl: mhd is not running") < text.index("frame three")

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    def bad_url() -> str:
        raise ClientError("--api must be an http:// or https:// URL", usage=True)

    out = io.StringIO()
    watch(lambda: '{"services": []}\n', 1, out, False, interrupt)
    assert out.getvalue() == '{"services": []}\n'  # --json --watch: bare documents, one a line
    with pytest.raises(ClientError, match="--api"):
        watch(bad_url, 1, out, True, interrupt)


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "nan"])
def test_watch_wants_a_sensible_interval(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl.main(["status", "--watch", bad])
    assert exc.value.code == 2 and "--watch" in capsys.readouterr().err
