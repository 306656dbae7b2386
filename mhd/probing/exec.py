"""Exec checks: run a command without a shell; exit 0 is healthy, the output's tail is the detail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from mhd.config.checkspec import CheckSpec
from mhd.probing.errors import CheckFailed

OUTPUT_TAIL = 200  # bytes of exec output kept in the detail


async def check_exec(spec: CheckSpec, address: str, port: int, service: str) -> str:
    if not spec.command:
        raise CheckFailed("exec check without a command")
    env = dict(os.environ)
    env.update(MHD_SERVICE=service, MHD_SERVER_ADDRESS=address, MHD_SERVER_PORT=str(port))
    proc = await _spawn(spec.command, env)
    try:
        tail = await _tail(proc.stdout)
        code = await proc.wait()
    finally:
        await _kill_group(proc)
    text = tail.decode("utf-8", "replace").strip()
    if code != 0:
        raise CheckFailed(f"exit {code}: {text}" if text else f"exit {code}")
    return f"exit 0: {text}" if text else "exit 0"


async def _spawn(argv: tuple[str, ...], env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own process group (a timeout kills the whole tree).

    The process exists before create_subprocess_exec() returns; if cancelled in between,
    asyncio kills only the leader, so finish the spawn shielded and kill its group ourselves.
    """
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _kill_group(await spawn)
        raise


async def _tail(stream: asyncio.StreamReader | None) -> bytes:
    """Last OUTPUT_TAIL bytes of the output, in bounded memory."""
    tail = b""
    while stream is not None:
        chunk = await stream.read(65536)
        if not chunk:
            break
        tail = (tail + chunk)[-OUTPUT_TAIL:]
    return tail


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group (also after normal exit: leftovers) and reap the leader.

    Runs on the cancellation/timeout path too; the wait is shielded so that a second
    cancellation cannot leave a zombie behind.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass
    if proc.returncode is None:
        await asyncio.shield(proc.wait())
    # Close the output pipe now rather than when EOF happens to be read: no fd outlives the
    # probe. Process has no public close(); its transport's close() is the documented one.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()
