"""Reading a `check:` block into a CheckSpec, merged key by key over the block it inherits from.

One parser per key, so that each check type's options are validated where they are declared and
a typo names the known keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mhd.config.checkspec import CHECK_TYPES, CheckSpec
from mhd.config.fields import FieldReader
from mhd.config.yamlsource import Located, plain, shown

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
QTYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "ANY")

CHECK_KEYS = (
    "type",
    "interval",
    "fast-interval",
    "down-interval",
    "timeout",
    "rise",
    "fall",
    "port",
    "source-address",
    "initial-state",
    "method",
    "path",
    "host",
    "expect-status",
    "body-regex",
    "tls-verify",
    "sni",
    "client-cert",
    "client-key",
    "payload",
    "expect",
    "query-name",
    "query-type",
    "expect-rcode",
    "command",
)
CHECK_FIELDS = {k: k.replace("-", "_") for k in CHECK_KEYS} | {"expect": "expect_regex"}


class CheckReader(FieldReader):
    """Check blocks (defaults -> service -> server) on top of the field readers."""

    def check(self, node: Located | None, base: CheckSpec) -> CheckSpec:
        """A check block merged key by key over `base` (defaults -> service -> server)."""
        if node is None:
            return base
        m = self.mapping(node, CHECK_KEYS, "check")
        if m is None:
            return base
        start = len(self.problems)
        fields: dict[str, Any] = {}
        for key, item in m.items():
            parser = _CHECK_PARSERS.get(key)
            if parser is not None:
                value = parser(self, item)
                if value is not None:
                    fields[CHECK_FIELDS[key]] = value
        if len(self.problems) > start:
            return base
        spec = replace(base, **fields)
        if spec.timeout >= spec.interval:
            self.error(
                m.get("timeout") or m.get("interval") or node,
                f"check timeout ({spec.timeout:g}s) must be shorter than its interval ({spec.interval:g}s)",
            )
        if spec.fast_interval is not None and not spec.timeout < spec.fast_interval <= spec.interval:
            self.error(
                m.get("fast-interval") or m.get("interval") or node,
                f"check fast-interval ({spec.fast_interval:g}s) must be longer than the timeout ({spec.timeout:g}s) and at most the interval ({spec.interval:g}s): it is the pace while a server is changing state",
            )
        if spec.down_interval is not None and spec.down_interval < spec.interval:
            self.error(
                m.get("down-interval") or m.get("interval") or node,
                f"check down-interval ({spec.down_interval:g}s) must not be shorter than its interval ({spec.interval:g}s): it is the pace for servers down for long",
            )
        if spec.type == "exec" and not spec.command:
            self.error(node, 'an exec check needs command: ["/path/to/script", "arg"]')
        return spec

    def regex(self, n: Located, what: str) -> Any:
        """A regular expression field (checked to compile); bytes for the TCP/UDP `expect`."""
        text = self.typed(n, str, what)
        if text is None:
            return None
        try:
            re.compile(text)
        except re.error as exc:
            self.error(n, f"{what} is not a valid regular expression: {exc}")
            return None
        return text.encode() if what == "expect" else text

    def path(self, node: Located) -> str | None:
        path = self.typed(node, str, "check.path")
        if path is not None and not path.startswith("/"):
            self.error(node, f"check.path must start with /, such as /healthz (got {shown(path)})")
            return None
        return path

    def statuses(self, node: Located) -> tuple[tuple[int, int], ...] | None:
        items = node.value if isinstance(node.value, list) else [node]
        ranges: list[tuple[int, int]] = []
        for item in items:
            text = str(plain(item.value)).strip()
            m = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", text)
            if not m or not 100 <= int(m.group(1)) <= int(m.group(2) or m.group(1)) <= 599:
                self.error(
                    item,
                    f"check.expect-status {shown(text)} must be a status (200) or a range (200-399) within 100-599",
                )
                return None
            ranges.append((int(m.group(1)), int(m.group(2) or m.group(1))))
        return tuple(ranges)

    def command(self, node: Located) -> tuple[str, ...] | None:
        value = node.value
        if isinstance(value, str):
            import shlex  # exec checks only

            argv = shlex.split(value)
        elif isinstance(value, list) and all(isinstance(i.value, str | int) for i in value):
            argv = [str(i.value) for i in value]
        else:
            self.error(node, "check.command must be a list of strings (argv) or a command line string")
            return None
        if not argv:
            self.error(node, "check.command is empty")
            return None
        return tuple(argv)


# Check key -> its reader, called as parser(reader, node). A table of the class, not of each reader:
# closures over a reader would tie it, and every node it saw, into a reference cycle that only the
# collector frees, and the config load pauses the collector (a 100,000-server load kept every
# group's tree alive to the end: 340 MB -> 110 MB peak once this became a plain table).
_CHECK_PARSERS: dict[str, Callable[[CheckReader, Located], Any]] = {
    "type": lambda r, n: r.choice(n, "check.type", CHECK_TYPES),
    "interval": lambda r, n: r.duration(n, "check.interval"),
    "fast-interval": lambda r, n: r.duration(n, "check.fast-interval"),
    "down-interval": lambda r, n: r.duration(n, "check.down-interval"),
    "timeout": lambda r, n: r.duration(n, "check.timeout"),
    "rise": lambda r, n: r.integer(n, "check.rise", 1, 100),
    "fall": lambda r, n: r.integer(n, "check.fall", 1, 100),
    "port": lambda r, n: r.integer(n, "check.port", 1, 65535),
    "source-address": lambda r, n: (a := r.address(n, "check.source-address")) and str(a),
    "initial-state": lambda r, n: r.choice(n, "check.initial-state", ("up", "down")),
    "method": lambda r, n: (r.choice(n, "check.method", ("get", "head")) or "").upper() or None,
    "path": lambda r, n: r.path(n),
    "host": lambda r, n: r.typed(n, str, "check.host"),
    "expect-status": lambda r, n: r.statuses(n),
    "body-regex": lambda r, n: r.regex(n, "check.body-regex"),
    "tls-verify": lambda r, n: r.boolean(n, "check.tls-verify"),
    "sni": lambda r, n: r.typed(n, str, "check.sni"),
    "client-cert": lambda r, n: r.typed(n, str, "check.client-cert"),
    "client-key": lambda r, n: r.typed(n, str, "check.client-key"),
    "payload": lambda r, n: (
        ((p := r.typed(n, str, "check.payload")) is not None and p.encode()) or None
    ),
    "expect": lambda r, n: r.regex(n, "expect"),
    "query-name": lambda r, n: r.typed(n, str, "check.query-name"),
    "query-type": lambda r, n: (
        (r.choice(n, "check.query-type", tuple(q.lower() for q in QTYPES)) or "").upper() or None
    ),
    "expect-rcode": lambda r, n: (
        (r.choice(n, "check.expect-rcode", tuple(c.lower() for c in RCODES)) or "").upper() or None
    ),
    "command": lambda r, n: r.command(n),
}
