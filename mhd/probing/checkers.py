"""The check types, and one bounded run of a check: ``run(spec, address, port, service)``.

Each type is a module of its own (`mhd.probing.http`, `udp`, `dns`, `exec`); plain TCP checks
never come here, they are a state machine of the engine (`mhd.probing.tcp.Probes`). Every error
becomes a failed `CheckResult` whose ``detail`` says what happened; only cancellation propagates
(so the prober can stop). Every run is bounded by ``spec.timeout``.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing.errors import CheckFailed, describe_error, is_local, timeout_detail
from mhd.probing.timers import EXPIRED, timers

Checker = Callable[[CheckSpec, str, int, str], Awaitable[str]]


async def timed(spec: CheckSpec, address: str, port: int, service: str) -> tuple[CheckResult, float]:
    """`run`, with its result's latency and start time, and the loop time at its end."""
    loop = asyncio.get_running_loop()
    at, start = time.time(), loop.time()
    ok, detail, timed_out, local = await run(spec, address, port, service)
    end = loop.time()
    return CheckResult(ok, end - start, detail, at, timed_out, local), end


async def run(spec: CheckSpec, address: str, port: int, service: str) -> tuple[bool, str, bool, bool]:
    """(ok, detail, timed out, the director's own fault) of one check of ``address:port`` (the
    probe port)."""
    # Same semantics as asyncio.timeout() (an outside cancel still propagates), but on the shared
    # `Timers`: at 10,000 probes/s asyncio.timeout() costs ~10% of a TCP check's CPU.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadline = timers(loop).call_at(loop.time() + spec.timeout, _expire, task)
    try:
        return True, await checker(spec.type)(spec, address, port, service), False, False
    except asyncio.CancelledError:
        if deadline[0] is EXPIRED and task.uncancel() <= cancelling:
            return False, timeout_detail(spec.timeout), True, False
        raise
    except CheckFailed as e:
        return False, str(e), False, False
    except Exception as e:
        return False, describe_error(e), False, is_local(e)
    finally:
        deadline[0] = None


def _expire(task: asyncio.Task[Any]) -> None:
    task.cancel()


async def check_none(spec: CheckSpec, address: str, port: int, service: str) -> str:
    return "no check"


# Check type -> (module, function); `checker` imports a module the first time its type runs: the
# exec checker's subprocess machinery alone is a dozen modules, and a daemon whose services check
# nothing but TCP (or nothing) should neither load them nor make its first pass wait for them.
_WHERE = {
    "http": ("mhd.probing.http", "check_http"),
    "https": ("mhd.probing.http", "check_http"),
    "udp": ("mhd.probing.udp", "check_udp"),
    "dns": ("mhd.probing.dns", "check_dns"),
    "exec": ("mhd.probing.exec", "check_exec"),
}
_LOADED: dict[str, Checker] = {"none": check_none}


def checker(kind: str) -> Checker:
    """The coroutine that runs a check of type `kind` (validated by the config: a known type)."""
    found = _LOADED.get(kind)
    if found is None:
        module, name = _WHERE[kind]
        found = _LOADED[kind] = getattr(importlib.import_module(module), name)
    return found


def preload(kinds: set[str]) -> None:
    """Import the checkers of these check types now (plain TCP has none: `Probes` runs it)."""
    for kind in kinds & _WHERE.keys():
        checker(kind)
