"""mhctl: the operator's tool. Its one parser; each command lives with what it talks to, and is
named here as "module:function" so that a command imports only what it needs (start-up time is
most of a one-shot command under emulation).

Offline commands (`check`, `plan`, `apply`: `mhd.ctl.offline`) read a config file and the kernel
directly; `predict` and `table` (`mhd.ctl.maglev`) answer from the config or the live kernel; the
others (`mhd.ctl.client`) talk to a running daemon over its API. Every failure is a one-line (or
one-line-per-problem) message and a documented exit status (`mhd.ctl.exits`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from mhd import DEFAULT_SOCKET, __version__
from mhd.ctl import client
from mhd.ctl.exits import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mhctl",
        description="Operate mhd, the IPVS/Maglev control-plane daemon. Exit status: 0 ok, 1 failure, 2 invalid input.",
    )
    p.add_argument("--version", action="version", version=f"mhctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate a config file (exit 0 or 2)")
    c.add_argument("file")
    c.set_defaults(func="mhd.ctl.offline:cmd_check")

    c = sub.add_parser("plan", help="the operations applying FILE would perform on this host now")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="a JSON list of operations ([] = in sync)")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.set_defaults(func="mhd.ctl.offline:cmd_plan")

    c = sub.add_parser("apply", help="one-shot reconcile, every server treated as healthy")
    c.add_argument("file")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    c.set_defaults(func="mhd.ctl.offline:cmd_apply")

    service_help = "service name (from the config) or key such as udp:10.0.0.1:53"
    c = sub.add_parser("predict", help="which real server each client goes to (bit-exact with ip_vs_mh)")
    c.add_argument("service", help=service_help)
    c.add_argument("clients", nargs="*", help="addr or addr:port ([v6]:port); default: one per line on stdin")
    c.add_argument("--config", help="predict from this config (all servers up) instead of the live kernel")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func="mhd.ctl.maglev:cmd_predict")

    c = sub.add_parser("table", help="each server's share of the Maglev table, and max/mean")
    c.add_argument("service", help=service_help)
    c.add_argument("--config", help="the table mhd would build from this config instead of the live one")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func="mhd.ctl.maglev:cmd_table")

    # The commands that talk to the running daemon.
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--socket", default=DEFAULT_SOCKET, help=f"daemon socket (default {DEFAULT_SOCKET})")
    daemon.add_argument("--api", help="talk to this URL instead, e.g. http://127.0.0.1:9180")
    daemon.add_argument("--token-file", help="bearer token for --api (the daemon's api.token-file)")

    c = sub.add_parser("status", help="services and servers of the running daemon", parents=[daemon])
    c.add_argument("--json", action="store_true", help="the raw status document")
    c.add_argument(
        "--watch", nargs="?", const=2.0, type=client.interval, metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )  # fmt: skip
    c.set_defaults(func=client.cmd_status)
    c = sub.add_parser(
        "reload",
        help="reload the daemon's config and wait for the result (exit 2: file invalid)",
        parents=[daemon],
    )
    c.set_defaults(func=client.cmd_reload)
    for verb in ("disable", "enable"):
        c = sub.add_parser(
            verb, help=f"{verb} a server of a service (persists across restarts)", parents=[daemon]
        )
        c.add_argument("service")
        c.add_argument("server", help="10.0.0.1:80, 10.0.0.1 or [2001:db8::1]:80")
        c.set_defaults(func=client.cmd_disable)
    c = sub.add_parser(
        "drain", help="withdraw every route of this director (IPVS keeps serving)", parents=[daemon]
    )
    c.add_argument(
        "--wait",
        nargs="?",
        const=0.0,
        type=float,
        metavar="SECONDS",
        help="wait until every route is withdrawn, then SECONDS more for the routers to converge",
    )
    c.set_defaults(func=client.cmd_drain)
    c = sub.add_parser(
        "undrain", help="announce this director's VIPs again (as health allows)", parents=[daemon]
    )
    c.set_defaults(func=client.cmd_drain)
    c = sub.add_parser(
        "compare", help="whether several directors build the same Maglev tables (exit 1: they differ)"
    )
    c.add_argument("targets", nargs="+", metavar="TARGET", help="a daemon's unix socket or API URL")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func="mhd.ctl.fleet:cmd_compare")
    register_import(sub)
    return p


def register_import(sub: Any) -> None:
    """Add `import keepalived` and `import ipvsadm` to an argparse subparsers object."""
    p = sub.add_parser("import", help="print an mhd.yaml converted from keepalived.conf or ipvsadm rules")
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    k = kinds.add_parser("keepalived", help="the virtual_server part of a keepalived configuration")
    k.add_argument("file", help="keepalived.conf (includes are followed)")
    k.add_argument("--config-id", help="keepalived -i: which @id conditional lines apply")
    k.set_defaults(func="mhd.ctl.imports:cmd_import")
    i = kinds.add_parser("ipvsadm", help="ipvsadm -Sn output: FILE, - for stdin, or the running kernel")
    i.add_argument("file", nargs="?", help="ipvsadm -Sn output or an ipvsadm -R script; - reads stdin")
    i.set_defaults(func="mhd.ctl.imports:cmd_import")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


def entry() -> NoReturn:
    """The `mhctl` command: `main()`, its output flushed, then out without the interpreter's teardown.

    A one-shot command at 100,000 objects ends holding them all (the config, the desired state, the
    dump, the plan); freeing them one by one at exit took 0.3-0.4 s on the host for the config
    alone, several seconds under emulation, and changes nothing: the kernel work is done, the
    output written. Nothing mhctl uses registers an exit hook. Exit statuses are the ones
    `sys.exit(main())` gives, except that output lost to a closed pipe makes 0 into 1.
    """
    try:
        code = main()
    except SystemExit as exc:  # argparse's and --version's exits, with the interpreter's meaning
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe: the output is lost, and the status says so
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
