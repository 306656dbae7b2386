"""Chaos runs against the real kernel: SIGKILL the daemon anywhere, inject kernel faults, edit IPVS
behind its back; then check that it converges to exactly what a clean apply gives.

Used by tests/vm/test_chaos.py (a small run in CI) and bench/bench_chaos.py (the full run, with
counts). Invariants, checked all along or after each convergence:
- the kernel equals a clean apply of the same config in a sibling namespace: the same services
  with the same settings (`ipvsadm -Sn`), and every service's destinations in the same *kernel
  list order* with the same weights (/proc/net/ip_vs lists them in list order), which is what
  the Maglev table is built from;
- no destination of weight 0 ever appears (a watcher thread reads /proc/net/ip_vs all along);
- the foreign services, made with ipvsadm before mhd ever ran, never change and are never owned;
- the state dir holds valid owned.json/disabled.json, owning exactly the configured services.

Kernel reads go through /proc/PID/net/ip_vs of a `sleep` process in the director namespace:
about 0.1 s for 17,000 destinations under qemu TCG, against seconds for `ipvsadm` there.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import netns as nsh
from configs import config, service
from daemon_proc import wait_for
from faults import IpvsadmEditor, read_counts

HERE = Path(__file__).resolve().parent
CHECK_PORT = 8080
FOREIGN = ("-A -t 10.99.0.1:80 -s wrr", "-a -t 10.99.0.1:80 -r 10.99.1.1:80 -m -w 3",
           "-a -t 10.99.0.1:80 -r 10.99.1.2:80 -m -w 1", "-A -u 10.99.0.2:53 -s mh -b mh-port",
           "-a -u 10.99.0.2:53 -r 10.99.1.3:53 -m -w 2")  # fmt: skip
FOREIGN_KEYS = ("TCP  0A630001:0050", "UDP  0A630002:0035")  # as /proc/net/ip_vs names them

# --- the configs -----------------------------------------------------------------------------------


def vip(i: int) -> str:
    return f"10.{50 + i // 250}.{i % 250}.1"


def server(i: int, j: int) -> str:
    return f"10.{100 + j}.{i // 250}.{i % 250 + 1}"


@dataclass(frozen=True)
class Layout:
    """`services` x `servers`, TCP port 80, mh with mh-port; the first `checked` services have a TCP
    check (the harness makes their servers fail and recover). Variant 1 is the reload target:
    every 20th unchecked service loses two servers, gains two and has a weight changed, the last
    service goes and a new one comes."""

    services: int
    servers: int
    checked: int

    def members(self, variant: int) -> dict[str, dict[str, int]]:
        """VIP -> {server: weight}."""
        out: dict[str, dict[str, int]] = {}
        for i in range(self.services + variant):
            if variant and i == self.services - 1:
                continue
            weights = {server(i, j): 1 for j in range(self.servers)}
            if variant and i >= self.checked and i % 20 == 7:
                del weights[server(i, 0)], weights[server(i, 1)]
                weights[server(i, self.servers)] = weights[server(i, self.servers + 1)] = 1
                weights[server(i, 2)] = 3
            out[vip(i)] = weights
        return out

    def checked_servers(self) -> list[str]:
        return [server(i, j) for i in range(self.checked) for j in range(self.servers)]

    def text(self, variant: int, interval: str = "30s") -> str:
        check = f"{{type: tcp, port: {CHECK_PORT}, interval: 1s, timeout: 0.8s, rise: 1, fall: 2}}"
        services = [
            service(f"s{i}", address, 80, weights, protocol="tcp", weights=weights,
                    check=check if i < self.checked else "{type: none}")
            for i, (address, weights) in enumerate(self.members(variant).items())
        ]  # fmt: skip
        return config(*services, reconcile_interval=interval)


# --- reading the kernel ----------------------------------------------------------------------------

Snapshot = dict[str, tuple[str, tuple[tuple[str, str, int], ...]]]  # service -> (scheduler, dests)
ZERO_WEIGHT = re.compile(r"^  -> \S+\s+\S+\s+0\s", re.M)


def parse_proc(text: str) -> Snapshot:
    """/proc/net/ip_vs: service "TCP  0A320001:0050" -> (scheduler and flags, destinations in
    kernel list order as (address:port, forwarding, weight))."""
    out: Snapshot = {}
    key, head, dests = "", "", []
    for line in text.splitlines()[3:]:
        if line.startswith("  -> "):
            parts = line.split()
            dests.append((parts[1], parts[2], int(parts[3])))
            continue
        if key:
            out[key] = (head, tuple(dests))
        parts = line.split()
        key, head, dests = f"{parts[0]}  {parts[1]}", " ".join(parts[2:]), []
    if key:
        out[key] = (head, tuple(dests))
    return out


def foreign_differences(text: str, foreign: Snapshot) -> dict[str, str]:
    """The foreign services that `text` (/proc/net/ip_vs) shows otherwise than `foreign`: key ->
    what was seen."""
    out = {}
    for key, want in foreign.items():
        start = text.find(key)
        end = text.find("\n", start)
        while start >= 0 and end >= 0 and text.startswith("  -> ", end + 1):
            end = text.find("\n", end + 1)
        got = parse_proc("\n\n\n" + text[start:end]).get(key) if start >= 0 else None
        if got != want:
            out[key] = f"{key}: {got} (was {want})"
    return out


class KernelView:
    """IPVS of one namespace, read through a process that lives there."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "infinity"])
        self.path = Path(f"/proc/{self.sleeper.pid}/net/ip_vs")
        wait_for(lambda: self.path.exists() and _netns_of(self.sleeper.pid) == _netns_of_name(ns), 60,
                 f"a reader in {ns}")  # fmt: skip

    def text(self) -> str:
        return self.path.read_text()

    def snapshot(self) -> Snapshot:
        return parse_proc(self.text())

    def managed(self) -> Snapshot:
        return {k: v for k, v in self.snapshot().items() if k not in FOREIGN_KEYS}

    def close(self) -> None:
        self.sleeper.kill()
        self.sleeper.wait()


def _netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _netns_of_name(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


class Watcher(threading.Thread):
    """Polls the kernel all along: weight-0 destinations and changes to the foreign services."""

    def __init__(self, view: KernelView, foreign: Snapshot) -> None:
        super().__init__(daemon=True, name="watcher")
        self.view, self.foreign = view, foreign
        self.stopping = threading.Event()
        self.polls = 0
        self.zero_weight: list[str] = []  # the offending lines, with their service
        self.foreign_changed: list[str] = []
        self.torn_reads = 0  # a foreign service missing from one read and back in the next one

    def check(self, text: str, reread: Callable[[], str] | None = None) -> None:
        """Weight-0 lines, and foreign services that differ from their first snapshot.

        /proc/net/ip_vs is not a snapshot: it is read a page at a time, and the kernel walks its
        service table again by position for each page, so services created or deleted meanwhile
        (mhd's 1,000, a chain's flush) can make a read skip another one. A skip cannot invent a
        weight-0 line, but it can hide a foreign service: a difference counts only if `reread`
        shows it again (nothing ever puts a deleted foreign service back)."""
        for m in ZERO_WEIGHT.finditer(text):
            head = max(text.rfind("\nTCP", 0, m.start()), text.rfind("\nUDP", 0, m.start())) + 1
            dest = text[m.start() : text.find("\n", m.start())]
            self.zero_weight.append(f"{text[head : text.find(chr(10), head)].strip()}: {dest.strip()}")
        changed = foreign_differences(text, self.foreign)
        if changed and reread is not None:
            for _ in range(3):
                again = foreign_differences(reread(), self.foreign)
                changed = {k: v for k, v in changed.items() if k in again}
            if not changed:
                self.torn_reads += 1
        self.foreign_changed += changed.values()

    def run(self) -> None:
        while not self.stopping.is_set():
            began = time.monotonic()
            self.check(self.view.text(), self.view.text)
            self.polls += 1
            # At most half a CPU: reading and scanning 17,000 destinations takes ~0.1-0.3 s in the VM.
            self.stopping.wait(max(0.05, time.monotonic() - began))

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# --- the daemon ------------------------------------------------------------------------------------


class ForkServer:
    """tests/vm/faulty_daemon.py --fork-server in a namespace: fresh daemons without the imports."""

    def __init__(self, ns: str, python: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, python, str(HERE / "faulty_daemon.py"), "--fork-server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.exits: dict[int, int] = {}
        self.replies: list[int] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.importing = True  # until its own "ready": it imports while the caller sets up

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cond:
                if "exit" in msg:
                    self.exits[msg["exit"]] = msg["status"]
                else:
                    self.replies.append(msg["pid"])
                self.cond.notify_all()

    def _reply(self, timeout: float) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: self.replies, timeout):
                raise AssertionError("the fork server did not answer")
            return self.replies.pop(0)

    def spawn(self, argv: list[str], log: Path, faults: str | None = None) -> int:
        assert self.proc.stdin is not None
        if self.importing:
            self._reply(900)
            self.importing = False
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "faults": faults}) + "\n")
        return self._reply(60)

    def wait_exit(self, pid: int, timeout: float) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: pid in self.exits, timeout):
                raise AssertionError(f"daemon {pid} did not exit")
            return self.exits[pid]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


@dataclass
class Mhd:
    """One daemon at a time on the same config, state dir and log: forked by the fork server, or
    (`exec_=True` at start) a real `python -m mhd.daemon` process."""

    ns: str
    server: ForkServer
    python: str
    config: Path
    state: Path
    log: Path
    faults: str | None = None
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0
    started_at: float = 0.0

    def start(self, exec_: bool = False) -> None:
        assert not self.alive()
        self.log.touch()  # the child opens it only once forked
        self.offset = self.log.stat().st_size
        argv = ["-c", str(self.config), "--state-dir", str(self.state)]
        self.started_at = time.monotonic()
        if exec_:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.ns, self.python, "-m", "mhd.daemon", *argv],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            self.pid = self.proc.pid
        else:
            self.proc = None
            self.pid = self.server.spawn(argv, self.log, self.faults)

    def alive(self) -> bool:
        if not self.pid:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid not in self.server.exits

    def exit_status(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        return self.server.exits.get(self.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(60)
        else:
            self.server.wait_exit(self.pid, 60)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def text(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_log(self, needle: str, timeout: float, after: int = 0) -> str:
        def seen() -> bool:
            if not self.alive():
                raise AssertionError(f"mhd exited with {self.exit_status()}:\n{self.text()[-3000:]}")
            return needle in self.text()[after:]

        wait_for(seen, timeout, f"'{needle}' in the daemon log")
        return self.text()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Counts:
    kills: Counter[str] = field(default_factory=Counter)  # by where they landed
    restarts: int = 0
    exec_restarts: int = 0
    chains: int = 0
    differences: int = 0  # services differing from the clean apply after convergence, summed
    converge_s: list[float] = field(default_factory=list)
    state_problems: list[str] = field(default_factory=list)
    leftover_tmp: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    editor_edits: int = 0
    cpu: list[str] = field(default_factory=list)

    def summary(self, watcher: Watcher | None) -> str:
        conv = sorted(self.converge_s)
        lines = [
            f"kills: {sum(self.kills.values())} ({', '.join(f'{k} {n}' for k, n in sorted(self.kills.items()))})",
            f"restarts: {self.restarts} ({self.exec_restarts} as `python -m mhd.daemon`), chains: {self.chains}",
            f"final differences from a clean apply: {self.differences}",
            "time to converge after the last restart: "
            + (f"median {conv[len(conv) // 2]:.1f}s, max {conv[-1]:.1f}s over {len(conv)}" if conv else "-"),
            f"state dir problems: {len(self.state_problems)}; leftover temporary files seen: {self.leftover_tmp}",
        ]
        if watcher is not None:
            lines.append(f"kernel polls: {watcher.polls}; weight-0 destinations seen: {len(watcher.zero_weight)};"
                         f" foreign service changes seen: {len(watcher.foreign_changed)}"
                         f" (torn reads of /proc, not confirmed by a re-read: {watcher.torn_reads})")  # fmt: skip
        if self.faults:
            lines.append("netlink faults injected: " + ", ".join(f"{k} {n}" for k, n in self.faults.items()))
        if self.editor_edits:
            lines.append(f"concurrent ipvsadm edits: {self.editor_edits}")
        lines += self.cpu
        return "\n".join(lines)


class Chaos:
    """A director namespace with foreign services, the checked servers' listener, references of a
    clean apply of both config variants (in a sibling namespace), and a daemon to torment."""

    def __init__(self, director: str, reference: str, work: Path, layout: Layout, python: str,
                 seed: int, say: object = print, interval: str = "30s") -> None:  # fmt: skip
        self.ns, self.layout, self.work, self.python = director, layout, work, python
        self.rng = random.Random(seed)
        self.say = say if callable(say) else print
        self.interval = interval
        self.counts = Counts()
        nsh.ipvsadm(director, "-R", input="\n".join(FOREIGN) + "\n")
        self.view = KernelView(director)
        self.foreign = {k: v for k, v in self.view.snapshot().items() if k in FOREIGN_KEYS}
        self.listener = _listener(director)
        self.up: set[str] = set()
        self.set_health(set(layout.checked_servers()))
        self.server = ForkServer(director, python)
        self.refs = [self._reference(reference, v) for v in (0, 1)]
        self.variant = 0
        self.config = work / "mhd.yaml"
        self.config.write_text(layout.text(0, interval))
        self.mhd = Mhd(director, self.server, python, self.config, work / "state", work / "mhd.log")
        self.watcher = Watcher(self.view, self.foreign)
        self.watcher.start()
        self.pass_s, self.pre_pass_s, self.reload_s = 5.0, 2.0, 3.0
        self.cpu_fractions = (0.0, 0.0, 1.0)
        self.mix = (1.0, 1.0, 1.0)  # odds of a kill in a start-up pass, a reload, a health transition

    def _reference(self, ns: str, variant: int) -> tuple[Snapshot, list[str]]:
        """A clean apply of variant `variant` in `ns`, with everything healthy."""
        clean_apply(ns, self.layout.text(variant), self.work / f"ref{variant}-state")
        view = KernelView(ns)
        snap = view.snapshot()
        view.close()
        saved = sorted(nsh.ipvsadm(ns, "-Sn").splitlines())
        nsh.ipvsadm(ns, "-C")  # the kernel's estimators walk every service: free the CPU
        return snap, saved

    def close(self) -> None:
        if self.mhd.alive():
            self.mhd.kill()
        self.watcher.stop()
        self.server.close()
        self.listener.kill()
        self.view.close()

    # --- the faults ------------------------------------------------------------------------------
    def set_health(self, up: set[str]) -> None:
        """Checked servers in `up` answer the check (a local route and the listener), others fail at
        once (no route)."""
        cmds = [f"route add local {a}/32 dev lo" for a in up - self.up]
        cmds += [f"route del local {a}/32 dev lo" for a in self.up - up]
        if cmds:
            nsh.ip_batch(self.ns, cmds)
        self.up = set(up)

    def flip_health(self) -> None:
        """Some checked servers fail or recover; never more than a quarter of a service is down."""
        up = set(self.up)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(self.layout.checked)
            mine = [server(i, j) for j in range(self.layout.servers)]
            a = self.rng.choice(mine)
            if a in up:
                if sum(m not in up for m in mine) < self.layout.servers // 4:
                    up.discard(a)
            else:
                up.add(a)
        self.set_health(up)

    def start(self, exec_: bool = False) -> None:
        self.mhd.start(exec_)
        self.counts.restarts += 1
        self.counts.exec_restarts += exec_

    def kill_after(self, delay: float, where: str, done_marker: str, after: int = 0) -> None:
        """SIGKILL after `delay`; count it as `where`, or `where`-after if `done_marker` was logged."""
        time.sleep(delay)
        assert self.mhd.alive(), f"mhd died by itself:\n{self.mhd.text()[-3000:]}"
        finished = done_marker in self.mhd.text()[after:]
        self.mhd.kill()
        self.counted(where + (" (after its pass)" if finished else ""))

    def counted(self, where: str) -> None:
        self.counts.kills[where] += 1
        since = time.monotonic() - self.mhd.started_at
        self.say(f"kill {sum(self.counts.kills.values())}: {where}, {since:.1f}s after the restart")

    def kill_cold(self) -> None:
        """Restart on whatever the kernel holds and kill at a random moment of the start-up pass."""
        before = self.view.text()
        self.start(exec_=False)
        delay = self.pre_pass_s + self.rng.uniform(0.0, self.pass_s)
        time.sleep(delay)
        assert self.mhd.alive(), f"mhd died by itself:\n{self.mhd.text()[-3000:]}"
        text = self.mhd.text()
        changed = self.view.text() != before
        self.mhd.kill()
        where = (
            "start-up, after its pass"
            if "started" in text
            else "start-up pass"
            if changed
            else "start-up, before writing"
        )
        self.counted(where)

    def ready(self, exec_: bool = False) -> None:
        self.start(exec_)
        self.mhd.wait_log("ready: ", 900)

    def kill_reload(self) -> None:
        self.ready()
        self.variant ^= 1
        self.config.write_text(self.layout.text(self.variant, self.interval))
        mark = len(self.mhd.text())
        self.mhd.signal(signal.SIGHUP)
        self.kill_after(self.rng.uniform(0.0, self.reload_s), "reload", "reconciled ", mark)

    def kill_health(self) -> None:
        self.ready()
        mark = len(self.mhd.text())
        self.flip_health()
        self.kill_after(self.rng.uniform(0.0, 4.0), "health transition", "reconciled ", mark)

    # --- the checks ------------------------------------------------------------------------------
    def converge(self, timeout: float, exec_: bool = False, since: float | None = None) -> None:
        """Everything healthy, a restart unless the daemon runs, and wait for the kernel to equal
        the clean apply; the time counts from `since`, or from the restart."""
        self.set_health(set(self.layout.checked_servers()))
        if not self.mhd.alive():
            self.start(exec_)
        started = since if since is not None else self.mhd.started_at
        ref, saved = self.refs[self.variant]

        def equal() -> bool:
            assert self.mhd.alive(), f"mhd exited with {self.mhd.exit_status()}:\n{self.mhd.text()[-3000:]}"
            return self.view.managed() == ref

        try:
            wait_for(equal, timeout, "the kernel to equal a clean apply")
        except AssertionError:
            got = self.view.managed()
            diff = sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k))
            self.counts.differences += len(diff)
            self.say(f"DIFFERENT after {timeout:g}s: {len(diff)} services, e.g. "
                     + "; ".join(f"{k}: want {ref.get(k)} got {got.get(k)}" for k in diff[:3]))  # fmt: skip
            return
        self.counts.converge_s.append(time.monotonic() - started)
        now = sorted(line for line in nsh.ipvsadm(self.ns, "-Sn").splitlines() if "10.99." not in line)
        if now != saved:
            missing, extra = set(saved) - set(now), set(now) - set(saved)
            self.counts.differences += len(missing) + len(extra)
            self.say(f"ipvsadm -Sn differs: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
        self.check_state()

    def check_state(self) -> None:
        """owned.json and disabled.json parse, have their shape, and own exactly the config."""
        state = self.mhd.state
        self.counts.leftover_tmp += len(list(state.glob(".*.tmp")))
        try:
            owned = json.loads((state / "owned.json").read_text())
            keys = {(k["address"], k["port"], k["protocol"]) for k in owned}
            disabled = state / "disabled.json"
            if disabled.exists() and not isinstance(json.loads(disabled.read_text()), dict):
                self.counts.state_problems.append("disabled.json is not a mapping")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.counts.state_problems.append(f"unreadable state: {exc!r}")
            return
        want = {(a, 80, 6) for a in self.layout.members(self.variant)}
        if keys != want:
            self.counts.state_problems.append(
                f"owned.json: {len(keys - want)} extra (e.g. {sorted(keys - want)[:2]}), {len(want - keys)} missing"
            )

    def chain(self, kills: int, converge_timeout: float, exec_final: bool = False) -> None:
        """A cold apply (the managed services flushed first), `kills` SIGKILLs at random moments of
        start-up passes, reloads and health transitions, each followed by a restart; then
        convergence and the checks."""
        if self.mhd.alive():
            self.mhd.kill()
            self.counts.kills["steady state"] += 1
        flush = "".join(_delete_line(k) + "\n" for k in self.view.managed())
        if flush:
            nsh.ipvsadm(self.ns, "-R", input=flush)
        self.kill_cold()
        kinds = (self.kill_cold, self.kill_reload, self.kill_health)
        for kill in self.rng.choices(kinds, weights=self.mix, k=kills - 1):
            kill()
        self.converge(converge_timeout, exec_final)
        self.counts.chains += 1

    def fault_phase(self, seconds: float, rate: float, converge_timeout: float) -> None:
        """Netlink faults inside the daemon and an ipvsadm editor outside for `seconds`, then both
        stop and the daemon must converge without a restart. It must never die; its CPU time is
        counted (a busy loop would use a whole core)."""
        if self.mhd.alive():
            self.mhd.kill()
            self.counts.kills["steady state"] += 1
        off, tally = self.work / "faults-off", self.work / "faults.json"
        off.touch()
        self.mhd.faults = f"seed={self.rng.randrange(1 << 30)},rate={rate},stop={off},counts={tally}"
        self.ready()
        base0, b0 = self.mhd.cpu_seconds(), time.monotonic()
        time.sleep(10)
        baseline = (self.mhd.cpu_seconds() - base0) / (time.monotonic() - b0)
        members = self.layout.members(self.variant)
        editable = [(f"tcp {a}:80", [f"{s}:80" for s in m]) for i, (a, m) in enumerate(members.items())
                    if i >= self.layout.checked]  # fmt: skip
        editor = IpvsadmEditor(self.ns, editable, self.rng.randrange(1 << 30))
        cpu0, t0 = self.mhd.cpu_seconds(), time.monotonic()
        off.unlink()
        editor.start()
        while time.monotonic() < t0 + seconds:
            assert self.mhd.alive(), f"mhd died under faults:\n{self.mhd.text()[-3000:]}"
            time.sleep(0.5)
        editor.stop()
        off.touch()
        cpu1, t1 = self.mhd.cpu_seconds(), time.monotonic()
        self.counts.editor_edits += editor.edits
        self.counts.faults = read_counts(tally)
        self.converge(converge_timeout, since=t1)
        assert self.mhd.alive(), f"mhd died after the faults:\n{self.mhd.text()[-3000:]}"
        cpu2, t2 = self.mhd.cpu_seconds(), time.monotonic()
        time.sleep(10)
        cpu3, t3 = self.mhd.cpu_seconds(), time.monotonic()
        log = self.mhd.text()
        self.counts.cpu = [
            f"daemon CPU: {baseline:.0%} of a core before the faults (10s),"
            f" {(cpu1 - cpu0) / (t1 - t0):.0%} under faults ({t1 - t0:.0f}s),"
            f" {(cpu2 - cpu1) / max(t2 - t1, 1e-9):.0%} while converging, {(cpu3 - cpu2) / (t3 - t2):.0%} idle after",
            f"daemon log: {log.count('reconcile failed')} failed passes, {log.count(' ERROR ')} errors,"
            f" {log.count('reconciled ')} passes with writes, alive: {self.mhd.alive()}",
        ]  # fmt: skip
        # (before, under faults, after): a busy loop would take a whole core after the faults
        self.cpu_fractions = (baseline, (cpu1 - cpu0) / (t1 - t0), (cpu3 - cpu2) / (t3 - t2))
        self.mhd.faults = None

    def calibrate(self) -> None:
        """A clean cold start and one reload there and back, to aim the kills."""
        self.start()
        text = self.mhd.wait_log("ready: ", 900)
        m = re.search(r"reconciled all services: \d+ operations in ([0-9.]+)s", text)
        started = _log_times(text, "started")
        self.pass_s = float(m.group(1)) if m else self.pass_s
        self.pre_pass_s = (
            max(0.0, started - self.mhd.started_at - self.pass_s) if started else self.pre_pass_s
        )
        for variant in (1, 0) if self.mix[1] else ():  # no reload kills: no need to time a reload
            self.config.write_text(self.layout.text(variant, self.interval))
            mark = len(self.mhd.text())
            t0 = time.monotonic()
            self.mhd.signal(signal.SIGHUP)
            self.mhd.wait_log("reconciled ", 300, mark)
            self.reload_s = time.monotonic() - t0
        self.variant = 0
        self.say(f"calibration: start-up before the pass ~{self.pre_pass_s:.1f}s, cold pass {self.pass_s:.1f}s,"
                 f" reload {self.reload_s:.1f}s")  # fmt: skip
        self.converge(300)


def clean_apply(ns: str, text: str, state: Path) -> None:
    """What `mhctl apply` does, in this process (no interpreter start-up): the reference."""
    import asyncio

    from mhd.config.validate import loads
    from mhd.ipvs import IpvsClient
    from mhd.reconcile import reconcile
    from mhd.state import StateDir

    async def apply() -> None:
        client = await IpvsClient.open()
        try:
            outcome = await reconcile(client, loads(text, "reference.yaml"), StateDir(state))
            assert not outcome.failures, outcome.failures[:3]
        finally:
            client.close()

    with nsh.in_netns(ns):
        asyncio.run(apply())


def _delete_line(proc_key: str) -> str:
    """`ipvsadm -R` line deleting a service named as /proc/net/ip_vs names it (IPv4 only)."""
    proto, where = proc_key.split()
    address, port = where.split(":")
    dotted = ".".join(str(int(address[i : i + 2], 16)) for i in range(0, 8, 2))
    return f"-D {'-t' if proto == 'TCP' else '-u'} {dotted}:{int(port, 16)}"


def _log_times(text: str, needle: str) -> float | None:
    """Monotonic-clock time of the line holding `needle`, from its wall-clock timestamp."""
    for line in text.splitlines():
        if needle in line:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            return stamp - time.time() + time.monotonic()
    return None


def _listener(ns: str) -> subprocess.Popen[bytes]:
    """An accept-and-close TCP listener on every local address, port CHECK_PORT, in `ns`."""
    code = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {CHECK_PORT})); s.listen(1024)\n"
        "while True:\n    c, _ = s.accept(); c.close()\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-S", "-c", code])
    return proc
