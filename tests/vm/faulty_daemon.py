"""Test-only launcher of mhd.daemon for the chaos runs: netlink faults, and a fork server.

    faulty_daemon.py [--faults SPEC] -- DAEMON_ARGS      one daemon, faults injected (faults.py)
    faulty_daemon.py --fork-server                       many daemons, one after the other

`--fork-server` imports mhd.daemon and the API (aiohttp) once, then forks a fresh daemon process
per request: under qemu TCG the imports alone take 20-40 s, which would make a hundred kills and
restarts take hours. Each child runs `mhd.daemon.main(argv)` from its very beginning (argument
parsing, logging, config load, state dir lock, IPVS client, dump, pass); only the import is
shared. Protocol, one JSON object per line:
    stdin:  {"argv": [...], "log": "/path", "faults": "SPEC" or null}
    stdout: {"pid": N}                     the child, forked
            {"exit": N, "status": S}       a child ended (S: exit status, or -signal)
Run it inside the daemon's network namespace (`ip netns exec NS python faulty_daemon.py ...`).
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faults


def run_daemon(argv: list[str], fault_spec: str | None) -> int:
    if fault_spec:
        faults.install(faults.FaultPlan.parse(fault_spec))
    from mhd.daemon import main

    return main(argv)


def _fork(request: dict[str, object]) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: a fresh daemon with its own log, never back into the server's loop
        os.setsid()
        fd = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        spec = request.get("faults")
        os._exit(run_daemon(argv, str(spec) if spec else None))
    except BaseException as exc:
        print(f"faulty_daemon child: {exc!r}", file=sys.stderr, flush=True)
        os._exit(70)


def fork_server() -> int:
    import mhd.api.server
    import mhd.daemon  # noqa: F401

    def say(message: dict[str, int]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    say({"pid": 0})  # ready
    children = 0
    open_input = True
    while open_input or children:
        ready, _, _ = select.select([sys.stdin] if open_input else [], [], [], 0.1)
        if ready:
            line = sys.stdin.readline()
            if not line:
                open_input = False
            else:
                say({"pid": _fork(json.loads(line))})
                children += 1
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children = 0
                break
            if pid == 0:
                break
            children -= 1
            say({"exit": pid, "status": os.waitstatus_to_exitcode(status)})
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args == ["--fork-server"]:
        return fork_server()
    spec = None
    if args[:1] == ["--faults"]:
        spec, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    return run_daemon(args, spec)


if __name__ == "__main__":
    sys.exit(main())
