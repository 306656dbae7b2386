"""mhctl's exit statuses, and the one mapping from a command's failure to its message and status.

0 success, 1 runtime failure (the kernel refused, mhd not running, no permission), 2 invalid input
(a config file, an unknown service or server, a bad argument). Every failure is one line on stderr
(one per problem for an invalid config), never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from mhd.ctl.client import ClientError, Rejected

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class UsageError(Exception):
    """Bad input from the operator (exit 2)."""


Command = Callable[[Namespace], Any] | str  # a function, or "module:function" imported when run


def _raised(exc: BaseException, module: str, *names: str) -> bool:
    """Is `exc` one of `module`'s exceptions? A module that was never imported raised nothing, so
    the mapping below costs a command none of the imports it did not need."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, tuple(getattr(loaded, n) for n in names))


def resolve(func: Command) -> Callable[[Namespace], Any]:
    if callable(func):
        return func
    module, _, name = func.partition(":")
    found: Callable[[Namespace], Any] = getattr(importlib.import_module(module), name)
    return found


def run(func: Command, args: Namespace) -> int:
    """Run a command (sync or async; None means success) and map every expected failure."""
    try:
        result = resolve(func)(args)
        if hasattr(result, "__await__"):
            import asyncio  # only the commands that talk to the kernel are coroutines

            result = asyncio.run(result)
        return EXIT_OK if result is None else int(result)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return failure(exc)


def failure(exc: Exception) -> int:
    """The message and exit status of a command's failure; anything unexpected is raised again."""
    if _raised(exc, "mhd.config.yamlsource", "ConfigError"):
        for problem in exc.problems:  # type: ignore[attr-defined]
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, Rejected):
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, UsageError) or _raised(exc, "mhd.state", "StateFileError"):
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, ClientError):
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAIL
    if _raised(exc, "mhd.kernel", "KernelError") or _raised(exc, "mhd.state", "StateError"):
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if _raised(exc, "mhd.netlink", "NetlinkError"):
        print(f"mhctl: the kernel refused: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if isinstance(exc, PermissionError):
        print(
            f"mhctl: permission denied ({exc.filename or exc}): run as root (CAP_NET_ADMIN)", file=sys.stderr
        )
        return EXIT_FAIL
    raise exc
