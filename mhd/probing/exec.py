"""Exec checks: run a command without a shell; exit 0 is healthy, the output's tail is the detail.

What the command gets: its argv (a bare name is looked up in `EXEC_PATH`), stdin from /dev/null,
stdout and stderr on one pipe, a session and process group of its own, default signal handling,
and an environment of exactly `EXEC_PATH` as ``PATH``, ``MHD_SERVICE``, ``MHD_SERVER_ADDRESS`` and
``MHD_SERVER_PORT`` (the probe port): nothing of the daemon's own environment.

Bounds: the output is read as it comes, so a command never blocks on a full pipe, and only its
last `OUTPUT_TAIL` bytes are kept; a command that writes more than `MAX_OUTPUT` bytes is killed
and fails. The check ends when the command exits (what it leaves in the background holds nothing
up), at the timeout, or on cancellation.

What is killed: everything the command started. At the end of every probe the command's process
group is SIGKILLed (before the command is reaped, so that its id cannot be reused meanwhile). A
descendant that left the group (``setsid``, a double fork) is killed once it is orphaned: the
daemon makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``, at the first exec probe), so
orphans of a command's tree become the daemon's children instead of init's, and the sweep that
ends every probe kills and reaps each child of the daemon that is in a session other than the
daemon's and than a running command's. Killing the group orphans the rest of the tree, so the
sweep repeats until it finds nothing (`SWEEP_DELAYS`); what is still there then (a process in
uninterruptible sleep) is taken by a later sweep. This relies on mhd starting no other child in
a session of its own; orphans of its other children (none expected) are adopted but not reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal

from mhd.config.checkspec import CheckSpec
from mhd.probing.errors import CheckFailed

OUTPUT_TAIL = 200  # bytes of exec output kept in the detail
MAX_OUTPUT = 1 << 20  # bytes of output after which the command is killed and the check fails
EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 1.0  # seconds to wait for a killed command's death before a later sweep reaps it
SWEEP_DELAYS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # between two sweep rounds
_PR_SET_CHILD_SUBREAPER = 36
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python; a command expects defaults

log = logging.getLogger("mhd.health")

_running: set[int] = set()  # pids (= session ids) of the commands not yet reaped
_subreaper = False


def environment(service: str, address: str, port: int) -> dict[str, str]:
    """The whole environment of a check command."""
    return {
        "PATH": EXEC_PATH,
        "MHD_SERVICE": service,
        "MHD_SERVER_ADDRESS": address,
        "MHD_SERVER_PORT": str(port),
    }


async def check_exec(spec: CheckSpec, address: str, port: int, service: str) -> str:
    if not spec.command:
        raise CheckFailed("exec check without a command")
    command = _Command(spec.command, environment(service, address, port))
    try:
        code = await command.wait()
    finally:
        # Shielded: a second cancellation must not leave the tree alive or a zombie behind.
        await asyncio.shield(asyncio.ensure_future(command.close()))
    text = command.tail.decode("utf-8", "replace").strip()
    if code != 0:
        raise CheckFailed(f"exit {code}: {text}" if text else f"exit {code}")
    return f"exit 0: {text}" if text else "exit 0"


class _Command:
    """One running command: its pid, a pidfd that becomes readable when it exits, its output pipe."""

    def __init__(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        _become_subreaper()
        self.tail = b""
        self.size = 0
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._out, self.pid = _spawn(argv, env)
        _running.add(self.pid)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:
            self._kill_group()
            os.waitpid(self.pid, 0)  # SIGKILLed: at once
            _running.discard(self.pid)
            os.close(self._out)
            raise

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), once the command has exited."""
        loop = self._loop
        loop.add_reader(self._out, self._read)
        loop.add_reader(self._pidfd, self._exited)
        try:
            await self._done
        finally:
            loop.remove_reader(self._out)
            loop.remove_reader(self._pidfd)
        assert self.returncode is not None
        return self.returncode

    def _read(self) -> None:
        error: OSError | None = None
        try:
            data = os.read(self._out, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            data, error = b"", e
        if not data:  # EOF (or a broken pipe): whoever holds it open now, nothing more to read
            self._loop.remove_reader(self._out)
            if error is not None and not self._done.done():
                self._done.set_exception(error)
            return
        self.size += len(data)
        self.tail = (self.tail + data)[-OUTPUT_TAIL:]
        if self.size > MAX_OUTPUT and not self._done.done():
            self._loop.remove_reader(self._out)
            self._done.set_exception(CheckFailed(f"more than {MAX_OUTPUT >> 20} MiB of output: killed"))

    def _exited(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self._kill_group()  # first: what it left running must not keep writing into the drain
        for _ in range(MAX_OUTPUT // 65536 + 1):  # what it wrote before exiting is in the pipe
            size = self.size
            self._read()
            if self.size == size:
                break
        self._reap()
        if not self._done.done():
            self._done.set_result(None)

    def _reap(self) -> None:
        """Kill what is left of the group while the leader still holds its id, then reap it."""
        self._kill_group()
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        _running.discard(self.pid)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill the command's group, reap it, close its fds, then sweep up its orphans."""
        os.close(self._out)
        try:
            if self.returncode is None:
                self._kill_group()
                if await _readable(self._pidfd, KILL_GRACE):
                    self._reap()
                else:  # not dead yet (uninterruptible sleep): a later sweep reaps it
                    _running.discard(self.pid)
        finally:
            os.close(self._pidfd)
        await sweep()


async def _readable(fd: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _spawn(argv: tuple[str, ...], env: dict[str, str]) -> tuple[int, int]:
    """(read end of the output pipe, pid) of ``argv`` started in a new session."""
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
    if path is None:
        raise CheckFailed(f"{argv[0]}: command not found in {env['PATH']}")
    out, into = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_blocking(out, False)  # ours only: O_NONBLOCK is per open file, and the pipe's two ends are two
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, into, 1),
            (os.POSIX_SPAWN_DUP2, into, 2),
        ]
        pid = os.posix_spawn(
            path, list(argv), env, file_actions=actions, setsid=True, setsigdef=_RESET_SIGNALS, setsigmask=()
        )
    except BaseException:
        os.close(out)
        raise
    finally:
        os.close(into)
    return out, pid


def _become_subreaper() -> None:
    """Orphans of a command's tree become this process's children (see the module docstring).
    Where that is refused (a seccomp filter), checks still run, without that guarantee."""
    global _subreaper
    if not _subreaper:
        _subreaper = True
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning(
                "prctl(PR_SET_CHILD_SUBREAPER) failed (%s): a process that an exec check's command "
                "moves out of its process group may outlive the check",
                os.strerror(ctypes.get_errno()),
            )


async def sweep() -> None:
    """Kill and reap the orphans of finished commands, repeating while killing one orphans more."""
    for delay in SWEEP_DELAYS:
        if delay:
            await asyncio.sleep(delay)
        orphans = _orphans()
        if not orphans:
            return
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _orphans() -> list[int]:
    """This process's children in a session of neither this process nor a running command."""
    own = os.getsid(0)
    orphans = []
    for pid in _children():
        try:
            sid = os.getsid(pid)
        except ProcessLookupError:
            continue
        if sid != own and sid not in _running:
            orphans.append(pid)
    return orphans


def _children() -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{task}/children") as f:
                pids += map(int, f.read().split())
    return pids
