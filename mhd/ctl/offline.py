"""`mhctl check`, `plan` and `apply`: a config file against this host's kernel, without the daemon."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mhd import kernel
from mhd.config.records import Config
from mhd.ctl.exits import EXIT_FAIL
from mhd.ctl.maglev import load_config, model_for
from mhd.reconcile import Outcome, reconcile, refusal
from mhd.state import StateDir

if TYPE_CHECKING:
    from mhd.ipvs import IpvsClient


async def _client(config: Config) -> IpvsClient:
    from mhd.ipvs import IpvsClient  # pyroute2: only for the commands that talk to the kernel

    warnings = kernel.load_modules(config.schedulers())
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return await IpvsClient.open()


def print_advice(file: str, config: Config) -> None:
    """Fleet warnings (`mhd.advice`) on stderr, each at its service's file:line; the exit status
    stays the config's: a warning is something to consider, not an error."""
    from mhd.advice import advise, positions
    from mhd.config.yamlsource import parse, read

    index = config.kernel.mh_tab_index or kernel.mh_tab_index()[0]
    where = positions(file, parse(read(file).decode("utf-8"), file))
    for advice in advise(config, index, where):
        print(advice, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> None:
    config = load_config(args.file)
    servers = sum(len(s.servers) for s in config.services)
    print_advice(args.file, config)
    print(f"{args.file}: OK, {len(config.services)} services, {servers} servers")


async def cmd_plan(args: argparse.Namespace) -> None:
    config = load_config(args.file)
    print_advice(args.file, config)
    state = StateDir(args.state_dir or config.state_dir)
    client = await _client(config)
    try:
        outcome = await reconcile(client, config, state, dry_run=True)
    finally:
        client.close()
    from mhd.maglev.predict import plan_moves  # numpy: only for the commands that need the model

    moved = plan_moves(outcome.observed, outcome.ops, model_for(config))
    if args.json:
        docs = [
            op.to_json() | ({"moves": moved[op.service.key]} if op.service.key in moved else {})
            for op in outcome.ops
        ]
        print(json.dumps(docs, indent=1))
        return
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


def report_claims(config: Config, outcome: Outcome) -> None:
    """`mhctl apply`: services it refused or adopted, on stderr (the daemon logs the same)."""
    names = {s.key: s.name for s in config.services}
    for key in outcome.refused:
        print(f"error: {refusal(names[key], key)}", file=sys.stderr)
    for key in outcome.adopted:
        print(f"adopted {names[key]} {key} (adopt: true): mhd manages it from now on", file=sys.stderr)


async def cmd_apply(args: argparse.Namespace) -> int | None:
    """Exit 1 when an operation failed (each failure is on stderr, the summary on stdout)."""
    config = load_config(args.file)
    state = StateDir(args.state_dir or config.state_dir)
    state.lock()
    client = await _client(config)
    try:
        outcome = await reconcile(client, config, state)
    finally:
        client.close()
        state.unlock()
    failed = {id(f.op) for f in outcome.failures}
    if not args.quiet:
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
    return EXIT_FAIL if outcome.failures or outcome.refused else None
