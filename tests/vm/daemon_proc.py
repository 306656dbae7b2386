"""A mhd daemon process in a network namespace, for the real-kernel tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    def start(self) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, self.python, "-m", "mhd.daemon", "-c", str(self.config),
             "--state-dir", str(self.state)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.wait_log("started", START_TIMEOUT)

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
