"""Reading a `check:` block into a CheckSpec, merged key by key over the block it inherits from.

One parser per key, so that each check type's options are validated where they are declared and
a typo names the known keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
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
            parser = self._check_fields.get(key)
            if parser is not None:
                value = parser(item)
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

    @cached_property
    def _check_fields(self) -> dict[str, Callable[[Located], Any]]:
        """Built once per validator: a file has a check block per service, often per server."""

        def regex(what: str) -> Callable[[Located], Any]:
            def parse_regex(n: Located) -> Any:
                text = self.typed(n, str, what)
                if text is None:
                    return None
                try:
                    re.compile(text)
                except re.error as exc:
                    self.error(n, f"{what} is not a valid regular expression: {exc}")
                    return None
                return text.encode() if what == "expect" else text

            return parse_regex

        return {
            "type": lambda n: self.choice(n, "check.type", CHECK_TYPES),
            "interval": lambda n: self.duration(n, "check.interval"),
            "fast-interval": lambda n: self.duration(n, "check.fast-interval"),
            "down-interval": lambda n: self.duration(n, "check.down-interval"),
            "timeout": lambda n: self.duration(n, "check.timeout"),
            "rise": lambda n: self.integer(n, "check.rise", 1, 100),
            "fall": lambda n: self.integer(n, "check.fall", 1, 100),
            "port": lambda n: self.integer(n, "check.port", 1, 65535),
            "source-address": lambda n: (a := self.address(n, "check.source-address")) and str(a),
            "initial-state": lambda n: self.choice(n, "check.initial-state", ("up", "down")),
            "method": lambda n: (self.choice(n, "check.method", ("get", "head")) or "").upper() or None,
            "path": lambda n: self.path(n),
            "host": lambda n: self.typed(n, str, "check.host"),
            "expect-status": lambda n: self.statuses(n),
            "body-regex": regex("check.body-regex"),
            "tls-verify": lambda n: self.boolean(n, "check.tls-verify"),
            "sni": lambda n: self.typed(n, str, "check.sni"),
            "client-cert": lambda n: self.typed(n, str, "check.client-cert"),
            "client-key": lambda n: self.typed(n, str, "check.client-key"),
            "payload": lambda n: (
                ((p := self.typed(n, str, "check.payload")) is not None and p.encode()) or None
            ),
            "expect": regex("expect"),
            "query-name": lambda n: self.typed(n, str, "check.query-name"),
            "query-type": lambda n: (
                (self.choice(n, "check.query-type", tuple(q.lower() for q in QTYPES)) or "").upper() or None
            ),
            "expect-rcode": lambda n: (
                (self.choice(n, "check.expect-rcode", tuple(r.lower() for r in RCODES)) or "").upper() or None
            ),
            "command": lambda n: self.command(n),
        }

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
