"""A mhd daemon process in a network namespace, for the real-kernel tests.

`Daemon.make(ns, directory, name, python)` puts its config, state dir and log in `directory`
(NAME.yaml, NAME-state, NAME.log); `request()` talks HTTP to its API over TCP (inside the
namespace) or over its unix socket, with the standard library only.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import netns as nsh

from mhd.ctl.client import unix_connection  # standard library only: cheap in the guest

START_TIMEOUT = 600.0  # Python start-up under TCG on a loaded 2-core host can take minutes


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Daemon:
    ns: str
    config: Path
    state: Path
    log: Path
    python: str
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    api_listen: str | None = None  # host:port of the API's TCP listener, in `ns`
    api_socket: Path | None = None  # the API's unix socket

    @classmethod
    def make(
        cls,
        ns: str,
        directory: Path,
        name: str,
        python: str,
        *,
        api_listen: str | None = None,
        api_socket: Path | None = None,
    ) -> Daemon:
        """Config NAME.yaml, state dir NAME-state and log NAME.log in `directory`."""
        paths = (directory / f"{name}.yaml", directory / f"{name}-state", directory / f"{name}.log")
        return cls(ns, *paths, python, api_listen=api_listen, api_socket=api_socket)

    def start(self) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, self.python, "-m", "mhd.daemon", "-c", str(self.config),
             "--state-dir", str(self.state)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.wait_log("ready: ", START_TIMEOUT)  # after "started": the API is open, the prober runs

    def text(self) -> str:
        return self.log.read_text()[self.log_offset :]

    def wait_log(self, needle: str, timeout: float = 60.0) -> str:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mhd exited with {self.proc.returncode}:\n{self.text()}")
            return needle in self.text()

        wait_for(seen, timeout, f"'{needle}' in the daemon log")
        return self.text()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL if still running (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(
        self,
        method: str,
        path: str,
        *,
        unix: bool = False,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> tuple[int, str, bytes]:
        """One HTTP request to the API: (status, content type, body)."""
        if unix:
            assert self.api_socket is not None, "no api socket configured"
            conn: http.client.HTTPConnection = unix_connection(str(self.api_socket), timeout)
            return _exchange(conn, method, path, body, headers)
        assert self.api_listen is not None, "no api listener configured"
        with nsh.in_netns(self.ns):  # the connection's socket is created in the daemon's namespace
            conn = http.client.HTTPConnection(self.api_listen, timeout=timeout)
            return _exchange(conn, method, path, body, headers)


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | None,
) -> tuple[int, str, bytes]:
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()
