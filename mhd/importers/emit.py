"""The converted services, and their rendering as a commented mhd.yaml.

The importers fill `ServiceOut` records; `render` writes them in the layout of etc/mhd.yaml, with
every value explicit (scheduler, flags, forwarding, check timings) so that the file says what it
does without relying on mhd's defaults, which differ from keepalived's and ipvsadm's.
Strings are written as JSON strings, which are valid double-quoted YAML scalars: an IPv6 address
or a regular expression never needs YAML-specific escaping rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mhd.importers import Note

Check = dict[str, object]

CHECK_ORDER = (
    "type", "interval", "timeout", "rise", "fall", "port", "source-address", "initial-state",
    "method", "path", "host", "expect-status", "body-regex", "tls-verify", "sni", "client-cert",
    "client-key", "payload", "expect", "query-name", "query-type", "expect-rcode", "command",
)  # fmt: skip


@dataclass
class ServerOut:
    address: str
    port: int
    weight: int = 1
    forward: str | None = None  # only when it differs from the service's
    check: Check | None = None  # only when it differs from the service's


@dataclass
class ServiceOut:
    source: str  # "file:line: what it was", written as a comment above the service
    name: str  # a readable name; made unique and valid by `render`
    scheduler: str
    forward: str
    address: str | None = None
    port: int | None = None
    protocol: str | None = None
    fwmark: int | None = None
    family: str | None = None
    mh_port: bool = False
    mh_fallback: bool = False
    check: Check | None = None
    servers: list[ServerOut] = field(default_factory=list)


def duration(seconds: float) -> str:
    """`6s`, `1.5s`, `500ms`: the config's duration syntax."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    return f"{round(seconds, 3):g}s"


PLAIN = re.compile(r"[A-Za-z/][A-Za-z0-9_./-]*|\d+(\.\d+)?(ms|s)")
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def scalar(value: object) -> str:
    """A YAML scalar: plain when unambiguous (`http`, `/healthz`, `6s`), else a JSON string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    text = str(value)
    if PLAIN.fullmatch(text) and text.lower() not in YAML_WORDS:
        return text
    return json.dumps(text)


def comment(text: str) -> str:
    """Text for a `#` comment: YAML allows no control characters, even there (shown escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def service_name(text: str) -> str:
    """A valid mhd service name ([a-z0-9][a-z0-9_.-]*) from any text."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-_.")
    return name if name and name[0].isalnum() else f"svc-{name}".rstrip("-")


def unique_names(services: Sequence[ServiceOut]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for svc in services:
        base = service_name(svc.name)
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}-{n + 1}")
    return names


def _check_lines(check: Check, indent: str) -> list[str]:
    keys = [k for k in CHECK_ORDER if k in check]
    return [f"{indent}{k}: {scalar(check[k])}" for k in keys]


def _service_lines(svc: ServiceOut, name: str) -> list[str]:
    out = [f"  # {comment(line)}" for line in svc.source.splitlines()]
    out.append(f"  - name: {name}")
    if svc.fwmark is not None:
        out.append(f"    fwmark: {svc.fwmark}")
        if svc.family:
            out.append(f"    family: {svc.family}")
    else:
        out += [
            f"    address: {scalar(svc.address)}",
            f"    port: {svc.port}",
            f"    protocol: {svc.protocol}",
        ]
    out.append(f"    scheduler: {svc.scheduler}")
    if svc.scheduler == "mh":
        out += [f"    mh-port: {scalar(svc.mh_port)}", f"    mh-fallback: {scalar(svc.mh_fallback)}"]
    out.append(f"    forward: {svc.forward}")
    if svc.check:
        out.append("    check:")
        out += _check_lines(svc.check, "      ")
    if not svc.servers:
        out.append("    servers: []")
        return out
    out.append("    servers:")
    for s in svc.servers:
        out.append(f"      - address: {scalar(s.address)}")
        out.append(f"        port: {s.port}")
        out.append(f"        weight: {s.weight}")
        if s.forward:
            out.append(f"        forward: {s.forward}")
        if s.check:
            out.append("        check:")
            out += _check_lines(s.check, "          ")
    return out


def render(services: Sequence[ServiceOut], notes: Iterable[Note], header: Sequence[str]) -> str:
    """The whole file: header comments, the review notes as comments, then `services:`."""
    out = [f"# {comment(h)}" if h else "#" for h in header]
    notes = list(notes)
    if notes:
        out.append("#")
        out.append(f"# {len(notes)} things to review (left out or changed on the way):")
        out += [f"#   {comment(str(n))}" for n in notes]
    out.append("")
    if not services:
        out.append("services: []")
        return "\n".join(out) + "\n"
    out.append("services:")
    for svc, name in zip(services, unique_names(services), strict=True):
        out += _service_lines(svc, name)
        out.append("")
    return "\n".join(out)
