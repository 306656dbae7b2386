"""mhctl's exit statuses, and the one mapping from a command's failure to its message and status.

0 success, 1 runtime failure (the kernel refused, mhd not running, no permission), 2 invalid input
(a config file, an unknown service or server, a bad argument). Every failure is one line on stderr
(one per problem for an invalid config), never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from mhd import kernel
from mhd.config.yamlsource import ConfigError
from mhd.ctl.client import ClientError, Rejected
from mhd.netlink import NetlinkError
from mhd.state import StateError, StateFileError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class UsageError(Exception):
    """Bad input from the operator (exit 2)."""


def run(func: Callable[[Namespace], Any], args: Namespace) -> int:
    """Run a command (sync or async; None means success) and map every expected failure."""
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return EXIT_OK if result is None else int(result)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except Rejected as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, StateFileError) as exc:
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAIL
    except (kernel.KernelError, StateError) as exc:
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except NetlinkError as exc:
        print(f"mhctl: the kernel refused: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except PermissionError as exc:
        print(
            f"mhctl: permission denied ({exc.filename or exc}): run as root (CAP_NET_ADMIN)", file=sys.stderr
        )
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
