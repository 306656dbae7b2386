"""`mhctl import keepalived FILE` and `mhctl import ipvsadm [FILE|-]`: the shell over the converters.

`register(sub)` adds the commands to mhctl's subparsers (one line in `mhd.ctl.build_parser`). The
YAML goes to stdout, so `mhctl import keepalived /etc/keepalived/keepalived.conf > mhd.yaml` works;
the notes go to stderr as well as into the file's comments. Exit status as mhctl's: 0 converted
(notes or not), 1 the live kernel could not be read, 2 the input is unusable. Every failure is one
line, never a traceback (the converters raise nothing but ImportFailed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from mhd.ctl.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from mhd.importers import Imported, ImportFailed, ipvsadm, keepalived


class LiveFailed(ImportFailed):
    """`ipvsadm -Sn` could not read the running kernel's rules (a runtime failure, not bad input)."""


def convert(args: argparse.Namespace) -> Imported:
    if args.source == "keepalived":
        return keepalived.convert_file(args.file, args.config_id)
    if args.file == "-":
        return ipvsadm.convert_text(sys.stdin.read(), "<stdin>")
    if args.file:
        return ipvsadm.convert_file(args.file)
    return ipvsadm.convert_text(live_rules(), "ipvsadm -Sn")


def live_rules() -> str:
    """The running kernel's rules, as `ipvsadm -Sn` prints them."""
    try:
        done = subprocess.run(["ipvsadm", "-Sn"], capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise LiveFailed("ipvsadm is not installed: give a file with the rules instead") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiveFailed(f"ipvsadm -Sn failed: {exc}") from None
    if done.returncode != 0:
        raise LiveFailed(f"ipvsadm -Sn failed: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def cmd_import(args: argparse.Namespace) -> int:
    try:
        result = convert(args)
    except ImportFailed as exc:
        print(f"mhctl: {exc}", file=sys.stderr)
        return EXIT_FAIL if isinstance(exc, LiveFailed) else EXIT_USAGE
    sys.stdout.write(result.yaml)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"mhctl: {result.services} services imported, {len(result.notes)} notes to review", file=sys.stderr)
    return EXIT_OK
