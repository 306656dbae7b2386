"""keepalived checkers -> mhd's check of a server: the check types, their settings and timings.

A real server may list several checkers; mhd runs one check per server, so the first checker that
has an mhd equivalent is converted and every further one is a note. Timings are inherited virtual
server -> real server -> checker (`Timings`), as keepalived 2.2 does; the `SSL` root block gives
every https check its client certificate and key.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from mhd.importers import Note, emit
from mhd.importers.emit import Check
from mhd.importers.kaconf import Node

DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "DNS_CHECK", "UDP_CHECK", "MISC_CHECK")
NO_EQUIVALENT_CHECKERS = ("SMTP_CHECK", "PING_CHECK", "BFD_CHECK", "FILE_CHECK")
DNS_TYPES = ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA")
TIMING_KEYS = ("delay_loop", "connect_timeout", "retry", "delay_before_retry", "warmup", "alpha")
CHECKER_NOTES = {
    "connect_ip": "connect_ip: mhd probes the server's own address",
    "bind_port": "bind_port: no mhd equivalent",
    "bind_if": "bind_if: no mhd equivalent",
    "fwmark": "checker fwmark: no mhd equivalent",
    "log_all_failures": "log_all_failures: mhd logs health transitions; per-probe failures are in mhd_check_failures",
    "nb_get_retry": "nb_get_retry: deprecated keepalived alias of retry",
    "http_protocol": "http_protocol: mhd sends HTTP/1.1 requests with Connection: close",
    "fast_recovery": "fast_recovery: no mhd equivalent (mhd checks one URL)",
    "min_reply_length": "min_reply_length: no mhd equivalent",
    "max_reply_length": "max_reply_length: no mhd equivalent",
    "misc_dynamic": "misc_dynamic: mhd does not change weights from a script's exit status",
    "user": "user: mhd runs exec checks as its own user",
}


@dataclass
class Timings:
    """Checker timings as keepalived inherits them; None: not set at this level."""

    values: dict[str, tuple[float, Node]] = field(default_factory=dict)

    def over(self, node: Node, notes: list[Note]) -> Timings:
        """These timings with the timing keywords of `node`'s children on top."""
        values = dict(self.values)
        for child in node.children or []:
            if child.keyword in TIMING_KEYS:
                value = _timing(child, notes)
                if value is not None:
                    values[child.keyword] = (value, child)
        return Timings(values)

    def get(self, key: str, default: float) -> float:
        found = self.values.get(key)
        return found[0] if found is not None else default


def _timing(node: Node, notes: list[Note]) -> float | None:
    if node.keyword == "alpha":
        word = node.args[0].lower() if node.args else "on"
        if word in ("on", "true", "yes"):
            return 1.0
        if word in ("off", "false", "no"):
            return 0.0
        notes.append(Note(node.file, node.line, f"alpha {node.args[0]!r} is not a boolean: ignored"))
        return None
    try:
        value = float(node.args[0]) if node.args else None
    except ValueError:
        value = None
    if value is None or value < 0 or value != value or value > 1e6:
        notes.append(Note(node.file, node.line, f"{node.text()}: not a valid number of seconds: ignored"))
        return None
    return value


class Checks:
    """The checkers of real servers, converted with notes appended to the importer's list."""

    def __init__(self, notes: list[Note]) -> None:
        self.notes = notes
        self.ssl: dict[str, str] = {}  # the SSL block's client-cert and client-key, for https checks

    def note(self, node: Node, message: str) -> None:
        self.notes.append(Note(node.file, node.line, message))

    def ssl_block(self, node: Node) -> None:
        for child in node.children or []:
            if child.keyword in ("certificate", "key") and child.args:
                self.ssl["client-cert" if child.keyword == "certificate" else "client-key"] = child.args[0]
            else:
                self.note(
                    child,
                    f"SSL {child.keyword}: no mhd equivalent (an https check has client-cert and client-key only)",
                )

    def first(self, checkers: list[Node], timings: Timings, virtualhost: str | None) -> Check | None:
        """A real server's checkers (in file order) as its one mhd check; each other one is a note."""
        check = None
        for i, checker in enumerate(checkers):
            if checker.keyword in NO_EQUIVALENT_CHECKERS:
                self.note(checker, f"{checker.keyword}: mhd has no such check: left out")
            elif check is not None or (i and any(c.keyword in CHECKERS for c in checkers[:i])):
                self.note(
                    checker,
                    f"{checker.keyword}: mhd runs one check per server (the first one, above): left out",
                )
            else:
                check = self.check(checker, timings.over(checker, self.notes), virtualhost)
        return check

    def check(self, node: Node, timings: Timings, virtualhost: str | None) -> Check | None:
        kind = node.keyword
        check: Check = {}
        if kind == "TCP_CHECK":
            check["type"] = "tcp"
        elif kind in ("HTTP_GET", "SSL_GET"):
            check.update(self.http(node, virtualhost, kind == "SSL_GET"))
        elif kind == "DNS_CHECK":
            check.update(self.dns(node))
        elif kind == "UDP_CHECK":
            check.update(self.udp(node))
        else:
            command = self.misc(node)
            if command is None:
                return None
            check.update(type="exec", command=command)
        for child in node.children or []:
            k = child.keyword
            if k == "connect_port":
                if child.args and child.args[0].isdigit() and 0 < int(child.args[0]) <= 65535:
                    check["port"] = int(child.args[0])
                else:
                    self.note(child, f"{child.text()}: not a port 1..65535: ignored")
            elif k == "bindto":
                try:
                    check["source-address"] = str(ipaddress.ip_address(child.args[0]))
                except (ValueError, IndexError):
                    self.note(child, f"{child.text()}: not an IP address: ignored")
            elif k in CHECKER_NOTES:
                self.note(child, f"{CHECKER_NOTES[k]}: left out")
        self.timings(node, kind, timings, check)
        return check

    def timings(self, node: Node, kind: str, timings: Timings, check: Check) -> None:
        interval = timings.get("delay_loop", DEFAULT_DELAY_LOOP) or DEFAULT_DELAY_LOOP
        timeout = timings.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        if kind == "MISC_CHECK":
            misc = next((c for c in node.children or [] if c.keyword == "misc_timeout"), None)
            value = _timing(misc, self.notes) if misc is not None else None
            if not value:
                timeout = round(interval * 0.8, 3)
                self.note(
                    node,
                    f"MISC_CHECK without misc_timeout: keepalived lets the script run for up to delay_loop ({interval:g}s); mhd's timeout must be shorter than the interval: {emit.duration(timeout)}",
                )
            else:
                timeout = value
        if timeout >= interval or timeout <= 0:
            new = round(interval * 0.8, 3)
            self.note(
                node,
                f"{kind}: timeout {timeout:g}s is not shorter than the interval (delay_loop {interval:g}s), which mhd requires: timeout {emit.duration(new)}",
            )
            timeout = new
        retry = int(timings.get("retry", {"DNS_CHECK": 3, "MISC_CHECK": 0}.get(kind, 1)))
        fall = min(100, retry + 1)
        check.update(interval=emit.duration(interval), timeout=emit.duration(timeout), rise=1, fall=fall)
        if timings.get("alpha", 0.0):
            check["initial-state"] = "down"
        if retry and "delay_before_retry" in timings.values:
            delay = timings.values["delay_before_retry"]
            if delay[0] != interval:
                self.note(
                    delay[1],
                    f"delay_before_retry {delay[0]:g}s: mhd probes every interval ({interval:g}s) also after a failure, so a failing server is removed after about {fall * interval:g}s instead of {interval + retry * delay[0]:g}s; lower interval or fall to detect sooner",
                )

    def http(self, node: Node, virtualhost: str | None, tls: bool) -> Check:
        check: Check = {
            "type": "https" if tls else "http",
            "method": "GET",
            "path": "/",
            "expect-status": ["200-299"],
        }
        urls = [c for c in node.children or [] if c.keyword == "url"]
        sni = False
        for child in node.children or []:
            if child.keyword == "virtualhost" and child.args:
                virtualhost = child.args[0]
            elif child.keyword == "enable_sni":
                sni = True
        for i, url in enumerate(urls):
            if i:
                self.note(url, "a further url: mhd checks one URL per server (the first): left out")
                continue
            for item in url.children or []:
                k, args = item.keyword, item.args
                if k == "path" and args:
                    check["path"] = args[0] if args[0].startswith("/") else "/" + args[0]
                elif k == "status_code" and args:
                    codes = [a for a in args if re.fullmatch(r"[1-5]\d\d(-[1-5]\d\d)?", a)]
                    if len(codes) != len(args):
                        self.note(item, f"{item.text()}: only codes and ranges within 100-599 are kept")
                    if codes:
                        check["expect-status"] = codes
                elif k == "digest":
                    self.note(
                        item,
                        "digest: mhd does not hash bodies; match the body with body-regex instead: left out",
                    )
                elif k == "virtualhost" and args:
                    virtualhost = args[0]
                elif k == "regex" and args:
                    check["body-regex"] = args[0]
                elif k == "regex_no_match":
                    check.pop("body-regex", None)
                    self.note(item, "regex_no_match: mhd has no negated body match: the regex is left out")
                else:
                    self.note(item, f"url {k}: no mhd equivalent: left out")
        if virtualhost:
            check["host"] = virtualhost
        if tls:
            check["tls-verify"] = False  # keepalived's SSL_GET does not verify the server certificate
            if sni and virtualhost:
                check["sni"] = virtualhost
            elif sni:
                self.note(node, "enable_sni without a virtualhost: mhd needs the name to send: left out")
            check.update(self.ssl)
        return check

    def dns(self, node: Node) -> Check:
        check: Check = {"type": "dns", "query-type": "SOA", "query-name": "."}
        for child in node.children or []:
            if child.keyword == "type" and child.args:
                if child.args[0].upper() in DNS_TYPES:
                    check["query-type"] = child.args[0].upper()
                else:
                    self.note(child, f"{child.text()}: not a type keepalived knows: SOA kept")
            elif child.keyword == "name" and child.args:
                check["query-name"] = child.args[0]
        return check

    def udp(self, node: Node) -> Check:
        check: Check = {"type": "udp"}
        reply = False
        for child in node.children or []:
            if child.keyword == "payload":
                data = _hex(" ".join(child.args))
                if data is None or any(b >= 0x80 for b in data):
                    self.note(child, "payload: mhd payloads are text (ASCII here); this one is not: left out")
                else:
                    check["payload"] = data.decode("ascii")
            elif child.keyword == "require_reply":
                reply = True
                if child.args:
                    pattern = _reply_regex(" ".join(child.args))
                    if pattern is None:
                        self.note(child, "require_reply: not a hex string: any reply is accepted")
                    else:
                        check["expect"] = pattern
        if not reply:
            self.note(
                node,
                "UDP_CHECK without require_reply passes when no ICMP error comes back; mhd's udp check needs a reply: make sure the server answers the payload, or use type: none",
            )
        return check

    def misc(self, node: Node) -> list[str] | None:
        path = next((c for c in node.children or [] if c.keyword == "misc_path"), None)
        if path is None or not path.args:
            self.note(node, "MISC_CHECK without misc_path: left out")
            return None
        try:
            argv = shlex.split(" ".join(path.args))
        except ValueError as exc:
            self.note(path, f"misc_path cannot be split into arguments ({exc}): left out")
            return None
        if not argv:
            self.note(path, "misc_path is empty: left out")
            return None
        self.note(
            path,
            "MISC_CHECK -> exec: mhd passes MHD_SERVICE, MHD_SERVER_ADDRESS and MHD_SERVER_PORT in the environment; check the script does not rely on anything else",
        )
        return argv


def _hex(text: str) -> bytes | None:
    """keepalived's free-form hex: `Ab12f 3 456` is AB 12 0F 03 45 06 (each word split in bytes)."""
    out = bytearray()
    for word in text.split():
        if not re.fullmatch(r"[0-9A-Fa-f]+", word):
            return None
        if len(word) % 2:
            word = word[:-1] + "0" + word[-1]
        out += bytes.fromhex(word)
    return bytes(out)


def _reply_regex(text: str) -> str | None:
    """A require_reply hex string (X: any nibble) as a regex anchored at the reply's start."""
    parts = []
    for word in text.split():
        if not re.fullmatch(r"[0-9A-Fa-fXx]+", word):
            return None
        if len(word) % 2:
            word = word[:-1] + "0" + word[-1]
        for i in range(0, len(word), 2):
            byte = word[i : i + 2]
            parts.append("." if "x" in byte.lower() else f"\\x{byte.lower()}")
    return "^" + "".join(parts) if parts else None
