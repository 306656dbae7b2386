"""mhctl: the operator's tool.

Offline commands (`check`, `plan`, `apply`) read a config file and the kernel directly; the others talk
to a running daemon over its API. Every failure is a one-line (or one-line-per-problem) message and a
documented exit status: 0 success, 1 runtime failure, 2 invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from mhd import __version__, kernel
from mhd.config.validate import Config, load
from mhd.config.yamlsource import ConfigError
from mhd.ctl import client
from mhd.ctl import maglev as ctl_maglev
from mhd.netlink import NetlinkError
from mhd.reconcile import Outcome, reconcile, refusal
from mhd.state import StateDir, StateError, StateFileError

if TYPE_CHECKING:
    from mhd.ipvs import IpvsClient

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A runtime failure with a message for the operator (exit 1)."""


def _config(path: str) -> Config:
    from mhd.model import mh_table_size

    index, _source = kernel.mh_tab_index()
    return load(path, mh_slots=mh_table_size(index))


async def _client(config: Config) -> IpvsClient:
    from mhd.ipvs import IpvsClient  # pyroute2: only for the commands that talk to the kernel

    warnings = kernel.load_modules(config.schedulers())
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return await IpvsClient.open()


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args.file)
    servers = sum(len(s.servers) for s in config.services)
    print(f"{args.file}: OK, {len(config.services)} services, {servers} servers")
    return EXIT_OK


async def cmd_plan(args: argparse.Namespace) -> int:
    config = _config(args.file)
    state = StateDir(args.state_dir or config.state_dir)
    client = await _client(config)
    try:
        outcome = await reconcile(client, config, state, dry_run=True)
    finally:
        client.close()
    from mhd.maglev.predict import plan_moves  # numpy: only for the commands that need the model

    moved = plan_moves(outcome.observed, outcome.ops, ctl_maglev.model_for(config))
    if args.json:
        docs = [
            op.to_json() | ({"moves": moved[op.service.key]} if op.service.key in moved else {})
            for op in outcome.ops
        ]
        print(json.dumps(docs, indent=1))
        return EXIT_OK
    for op in outcome.ops:
        print(op.describe())
    names = {s.key: s.name for s in config.services}
    for key, share in sorted(moved.items(), key=lambda kv: kv[0].sort_key()):
        print(f"# {names.get(key, '-')} {key}: moves {share:.1%} of flows to another server")
    for key in outcome.unmanaged:
        print(f"# not managed by mhd, left alone: {key}")
    for key in outcome.refused:
        print(f"# refused: {refusal(names[key], key)}")
    for key in outcome.adopted:
        print(f"# would adopt {names[key]} {key} (adopt: true): IPVS holds it and mhd does not own it yet")
    print(f"{len(outcome.ops)} operations" if outcome.ops else "in sync: nothing to do")
    return EXIT_OK


def report_claims(config: Config, outcome: Outcome) -> None:
    """`mhctl apply`: services it refused or adopted, on stderr (the daemon logs the same)."""
    names = {s.key: s.name for s in config.services}
    for key in outcome.refused:
        print(f"error: {refusal(names[key], key)}", file=sys.stderr)
    for key in outcome.adopted:
        print(f"adopted {names[key]} {key} (adopt: true): mhd manages it from now on", file=sys.stderr)


async def cmd_apply(args: argparse.Namespace) -> int:
    config = _config(args.file)
    state = StateDir(args.state_dir or config.state_dir)
    state.lock()
    client = await _client(config)
    try:
        outcome = await reconcile(client, config, state)
    finally:
        client.close()
        state.unlock()
    failed = {id(f.op) for f in outcome.failures}
    if args.quiet:
        pass
    else:
        for op in outcome.ops:
            if id(op) not in failed:
                print(op.describe())
    for failure in outcome.failures:
        print(f"error: {failure}", file=sys.stderr)
    report_claims(config, outcome)
    print(
        f"applied {outcome.applied} operations"
        + (f", {len(outcome.failures)} failed" if outcome.failures else "")
        + (f", {len(outcome.refused)} services refused" if outcome.refused else "")
    )
    return EXIT_FAIL if outcome.failures or outcome.refused else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mhctl",
        description="Operate mhd, the IPVS/Maglev control-plane daemon. Exit status: 0 ok, 1 failure, 2 invalid input.",
    )
    p.add_argument("--version", action="version", version=f"mhctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate a config file (exit 0 or 2)")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("plan", help="the operations applying FILE would perform on this host now")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="a JSON list of operations ([] = in sync)")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.set_defaults(func=cmd_plan)

    c = sub.add_parser("apply", help="one-shot reconcile, every server treated as healthy")
    c.add_argument("file")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    c.set_defaults(func=cmd_apply)

    ctl_maglev.register(sub)  # predict, table: Maglev answers from the config or the live kernel
    client.add_commands(sub)  # status, reload, disable, enable: talk to the running daemon
    return p


def run(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a command, turning every expected failure into a message and an exit status."""
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(_as_coroutine(result))
        return int(result)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except (ctl_maglev.UsageError, StateFileError) as exc:
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (kernel.KernelError, StateError, Failure) as exc:
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
        return 130


async def _as_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    return await coro


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
