"""mhctl: the operator's tool. Its one parser; each command lives with what it talks to.

Offline commands (`check`, `plan`, `apply`: `mhd.ctl.offline`) read a config file and the kernel
directly; `predict` and `table` (`mhd.ctl.maglev`) answer from the config or the live kernel; the
others (`mhd.ctl.client`) talk to a running daemon over its API. Every failure is a one-line (or
one-line-per-problem) message and a documented exit status (`mhd.ctl.exits`).
"""

from __future__ import annotations

import argparse
import sys

from mhd import __version__
from mhd.config.records import DEFAULT_SOCKET
from mhd.ctl import client, offline
from mhd.ctl import fleet as ctl_fleet
from mhd.ctl import maglev as ctl_maglev
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
    c.set_defaults(func=offline.cmd_check)

    c = sub.add_parser("plan", help="the operations applying FILE would perform on this host now")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="a JSON list of operations ([] = in sync)")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.set_defaults(func=offline.cmd_plan)

    c = sub.add_parser("apply", help="one-shot reconcile, every server treated as healthy")
    c.add_argument("file")
    c.add_argument("--state-dir", help="state dir (default: the config's state-dir)")
    c.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    c.set_defaults(func=offline.cmd_apply)

    service_help = "service name (from the config) or key such as udp:10.0.0.1:53"
    c = sub.add_parser("predict", help="which real server each client goes to (bit-exact with ip_vs_mh)")
    c.add_argument("service", help=service_help)
    c.add_argument("clients", nargs="*", help="addr or addr:port ([v6]:port); default: one per line on stdin")
    c.add_argument("--config", help="predict from this config (all servers up) instead of the live kernel")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=ctl_maglev.cmd_predict)

    c = sub.add_parser("table", help="each server's share of the Maglev table, and max/mean")
    c.add_argument("service", help=service_help)
    c.add_argument("--config", help="the table mhd would build from this config instead of the live one")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=ctl_maglev.cmd_table)

    # The commands that talk to the running daemon.
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--socket", default=DEFAULT_SOCKET, help=f"daemon socket (default {DEFAULT_SOCKET})")
    daemon.add_argument("--api", help="talk to this URL instead, e.g. http://127.0.0.1:9180")
    daemon.add_argument("--token-file", help="bearer token for --api (the daemon's api.token-file)")

    c = sub.add_parser("status", help="services and servers of the running daemon", parents=[daemon])
    c.add_argument("--json", action="store_true", help="the raw status document")
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
    c.set_defaults(func=ctl_fleet.cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
