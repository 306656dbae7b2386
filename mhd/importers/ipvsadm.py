"""`ipvsadm -Sn` output (or an `ipvsadm -R` script) -> mhd.yaml.

One line is one command: `-A` adds a service (`-t`/`-u`/`--sctp-service` ADDR:PORT or `-f` MARK,
`-s` scheduler, `-b` scheduler flags, `-p` persistence, `-o`, `-M`, `--pe`, `-6`), `-a` a real
server of it (`-r` ADDR[:PORT], `-g`/`-i`/`-m` forwarding, `-w` weight, `-x`/`-y` thresholds,
tunnel options). Long option names are accepted too. ipvsadm's own defaults apply when an option
is missing: scheduler `wlc`, forwarding `-g` (direct routing), weight 1.

ipvsadm has no health checks, so every service is imported with `check: {type: none}` and a note:
mhd would otherwise treat every server as healthy forever without saying so. Anything without an
mhd equivalent (persistence, one-packet scheduling, thresholds, tunnel types, `--set`, sync
daemons, ...) is a note with its line.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from mhd.importers import Imported, ImportFailed, Note, emit, read_text
from mhd.importers.emit import ServerOut, ServiceOut

DEFAULT_SCHEDULER = "wlc"
SERVICE_OPTS = {
    "-t": "tcp",
    "--tcp-service": "tcp",
    "-u": "udp",
    "--udp-service": "udp",
    "--sctp-service": "sctp",
}
FWMARK_OPTS = ("-f", "--fwmark-service")
FORWARD_OPTS = {
    "-g": "dr", "--gatewaying": "dr", "-i": "tunnel", "--ipip": "tunnel", "-m": "nat", "--masquerading": "nat",
}  # fmt: skip
# Options without an mhd equivalent, and whether they take a value.
IGNORED = {
    "-M": True, "--netmask": True, "--pe": True, "-o": False, "--ops": False,
    "-x": True, "--u-threshold": True, "-y": True, "--l-threshold": True,
    "--tun-type": True, "--tun-port": True, "--tun-nocsum": False, "--tun-csum": False, "--tun-remcsum": False,
}  # fmt: skip
COMMANDS = {"-A": "service", "--add-service": "service", "-a": "server", "--add-server": "server"}


@dataclass
class _Line:
    """One parsed command line: the service it names and its options."""

    number: int
    command: str
    text: str
    key: tuple[object, ...] | None = None
    fields: dict[str, object] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


class Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.notes: list[Note] = []
        self.services: dict[tuple[object, ...], ServiceOut] = {}

    def note(self, line: int, message: str) -> None:
        self.notes.append(Note(self.file, line, message))

    def run(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError as exc:
                self.note(number, f"cannot split the line into words ({exc}): left out")
                continue
            if words and words[0] in ("ipvsadm", "/sbin/ipvsadm", "/usr/sbin/ipvsadm"):
                words = words[1:]
            parsed = self.parse(number, words)
            if parsed is None:
                continue
            if parsed.command == "service":
                self.add_service(parsed)
            else:
                self.add_server(parsed)
        mh = [s for s in self.services.values() if s.scheduler == "mh" and len(s.servers) > 1]
        if mh:
            self.note(
                1,
                f"{len(mh)} mh services: ipvsadm -S sorts servers, so the kernel's list order (which decides the Maglev table) is not in this text; `mhctl plan` shows whether mhd's first apply re-sends servers to reach its canonical order",
            )

    def parse(self, number: int, words: list[str]) -> _Line | None:
        if not words:
            return None
        command = COMMANDS.get(words[0])
        if command is None:
            what = {
                "-C": "clear",
                "--clear": "clear",
                "--set": "timeouts",
                "--start-daemon": "sync daemon",
            }.get(words[0])
            self.note(
                number,
                f"ipvsadm {words[0]}" + (f" ({what})" if what else "") + ": no mhd equivalent here: left out",
            )
            return None
        parsed = _Line(number, command, " ".join(words))
        items = iter(words[1:])
        for word in items:
            if (
                word in SERVICE_OPTS
                or word in FWMARK_OPTS
                or word
                in ("-r", "--real-server", "-s", "--scheduler", "-b", "--sched-flags", "-w", "--weight")
            ):
                value = next(items, None)
                if value is None:
                    self.note(number, f"{word} without a value: line left out")
                    return None
                parsed.options[word] = value
            elif word in ("-p", "--persistent"):
                parsed.options[word] = ""
            elif word in ("-6", "--ipv6"):
                parsed.options["-6"] = ""
            elif word in FORWARD_OPTS:
                parsed.options["forward"] = FORWARD_OPTS[word]
            elif word in IGNORED:
                value = next(items, "") if IGNORED[word] else ""
                self.note(number, f"{word} {value}".strip() + ": no mhd equivalent: left out")
            elif re.fullmatch(r"\d+", word) and ("-p" in parsed.options or "--persistent" in parsed.options):
                continue  # the persistence timeout
            else:
                self.note(number, f"unknown ipvsadm option {word!r}: line left out")
                return None
        if not self.identify(parsed):
            return None
        return parsed

    def identify(self, parsed: _Line) -> bool:
        """The service key of a line (protocol, address, port) or (fwmark, mark, family)."""
        opts = parsed.options
        for opt, proto in SERVICE_OPTS.items():
            if opt in opts:
                endpoint = _endpoint(opts[opt])
                if endpoint is None or endpoint[1] == 0:
                    self.note(
                        parsed.number,
                        f"{opt} {opts[opt]}: not ADDRESS:PORT with a numeric address and port 1..65535 (use ipvsadm -Sn): left out",
                    )
                    return False
                parsed.key = (proto, endpoint[0], endpoint[1])
                parsed.fields = {"address": str(endpoint[0]), "port": endpoint[1], "protocol": proto}
                return True
        for opt in FWMARK_OPTS:
            if opt in opts:
                mark = opts[opt]
                if not mark.isdigit() or not 0 < int(mark) <= 0xFFFFFFFF:
                    self.note(parsed.number, f"{opt} {mark}: not a mark 1..4294967295: left out")
                    return False
                family = "ipv6" if "-6" in opts else "ipv4"
                parsed.key = ("fwmark", int(mark), family)
                parsed.fields = {"fwmark": int(mark), "family": "ipv6" if family == "ipv6" else None}
                return True
        self.note(parsed.number, "no service (-t, -u, --sctp-service or -f): left out")
        return False

    def add_service(self, line: _Line) -> None:
        assert line.key is not None
        if line.key in self.services:
            self.note(line.number, "this service is added twice: the second one is left out")
            return
        opts = line.options
        scheduler = opts.get("-s", opts.get("--scheduler", DEFAULT_SCHEDULER))
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", scheduler) or scheduler == "none":
            self.note(
                line.number, f"scheduler {scheduler!r}: not one mhd can use: {DEFAULT_SCHEDULER} instead"
            )
            scheduler = DEFAULT_SCHEDULER
        if "-p" in opts or "--persistent" in opts:
            self.note(
                line.number,
                "persistence (-p): mhd has no persistent services; with scheduler mh a client keeps its server while the server set is stable: left out",
            )
        if "-6" in opts and "fwmark" not in line.fields:
            self.note(line.number, "-6 only matters for a fwmark service: ignored")
        svc = ServiceOut(
            source=f"{self.file}:{line.number}: {line.text}", name=_name(line), scheduler=scheduler, forward="dr",
            check={"type": "none"}, **line.fields,  # type: ignore[arg-type]
        )  # fmt: skip
        flags = opts.get("-b", opts.get("--sched-flags"))
        if flags is not None:
            self.flags(line.number, svc, flags)
        self.services[line.key] = svc

    def flags(self, number: int, svc: ServiceOut, text: str) -> None:
        for flag in filter(None, text.split(",")):
            if svc.scheduler == "mh" and flag in ("mh-port", "flag-2"):
                svc.mh_port = True
            elif svc.scheduler == "mh" and flag in ("mh-fallback", "flag-1"):
                svc.mh_fallback = True
            else:
                self.note(
                    number,
                    f"scheduler flag {flag} with scheduler {svc.scheduler}: no mhd equivalent (mhd sets mh-port and mh-fallback for mh only): left out",
                )

    def add_server(self, line: _Line) -> None:
        assert line.key is not None
        svc = self.services.get(line.key)
        if svc is None:
            self.note(line.number, "a server of a service not added before (-A): left out")
            return
        opts = line.options
        text = opts.get("-r", opts.get("--real-server"))
        endpoint = _endpoint(text, default_port=svc.port or 0) if text else None
        if endpoint is None:
            self.note(
                line.number,
                f"real server {text!r}: not ADDRESS[:PORT] with a numeric address (use ipvsadm -Sn): left out",
            )
            return
        weight = opts.get("-w", opts.get("--weight", "1"))
        if not weight.isdigit() or not 0 < int(weight) <= 65535:
            why = (
                "mhd refuses weight 0 (remove or disable a server instead)"
                if weight == "0"
                else "not 1..65535"
            )
            self.note(line.number, f"weight {weight}: {why}: server left out")
            return
        address, port = endpoint
        if port == 0 and svc.fwmark is None:
            self.note(line.number, f"real server {text}: port 0 only goes with a fwmark service: left out")
            return
        if any(s.address == str(address) and s.port == port for s in svc.servers):
            self.note(line.number, f"server {text} is added twice: the second one is left out")
            return
        forward = str(opts.get("forward", "dr"))
        if svc.fwmark is None and svc.address is not None:
            family = ipaddress.ip_address(svc.address).version
            if address.version != family and forward != "tunnel":
                self.note(
                    line.number,
                    f"server {text} is IPv{address.version} but the service is IPv{family} (only tunnels mix families): left out",
                )
                return
        if not svc.servers:
            svc.forward = forward  # the first server's method becomes the service's
        svc.servers.append(
            ServerOut(str(address), port, int(weight), forward if forward != svc.forward else None)
        )


def _name(line: _Line) -> str:
    f = line.fields
    if "fwmark" in f:
        return f"fwmark-{f['fwmark']}" + ("-ipv6" if f.get("family") else "")
    return f"{f['protocol']}-{f['address']}-{f['port']}"


def _endpoint(
    text: str, default_port: int | None = None
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """`10.0.0.1:80`, `[2001:db8::1]:80`, or without a port when `default_port` is given."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?", text)
    if m is None:
        return None
    addr, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if port is None and default_port is None:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    number = int(port) if port is not None else int(default_port or 0)
    return (ip, number) if number <= 65535 else None


def convert_text(text: str, file: str = "<stdin>") -> Imported:
    """mhd.yaml and notes from `ipvsadm -Sn` output or an `ipvsadm -R` script."""
    c = Converter(file)
    c.run(text)
    for svc in c.services.values():
        if not svc.servers:
            c.note(int(svc.source.split(": ", 1)[0].rsplit(":", 1)[1]), f"{svc.name} has no servers")
    c.notes.append(
        Note(
            file,
            1,
            "ipvsadm has no health checks: every service is imported with check type none (every server counts as healthy); add a check: block to each",
        )
    )
    header = [
        f"mhd.yaml imported from ipvsadm rules ({file})",
        "by mhctl import ipvsadm. Review every note below, then `mhctl check` this file",
        "and `mhctl plan` it on the director before switching.",
    ]
    notes = tuple(sorted(c.notes, key=lambda n: n.line))
    return Imported(emit.render(list(c.services.values()), notes, header), notes, len(c.services))


def convert_file(path: str) -> Imported:
    """The same from a file; ImportFailed if it is not a readable text file."""
    try:
        text = read_text(path)
    except ImportFailed as exc:
        raise ImportFailed(f"{path}: {exc}") from None
    return convert_text(text, path)
