"""Reading one value of a config: typed, ranged, a duration, one of a set, an address.

Each reader records a Problem at the value (file:line:column, key path, the fix) and returns None
instead of raising, so that one pass over a file collects every problem. `mhd.config.checks` and
`mhd.config.validate` build on these for check blocks and for the whole file.
"""

from __future__ import annotations

import re
from datetime import date
from typing import TypeVar

from mhd.config.yamlsource import Located, Problem, shown
from mhd.model import IPAddress, parse_ip

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Every duration is finite and bounded (etc/mhd.yaml names the bounds): a NaN interval stops the
# probes' shared timer heap, a tiny reconcile-interval spins a core on full dumps, and an infinite
# or huge one means drift is never repaired.
DURATION_BOUNDS = {
    "reconcile-interval": (0.1, 3600.0),
    "check.interval": (0.01, 3600.0),
    "check.timeout": (0.001, 3600.0),
    "announce.hold-down": (0.0, 3600.0),  # 0: re-announce as soon as the service is back
}
OTHER_DURATIONS = (0.001, 3600.0)  # a duration key not listed above: still finite and bounded
T = TypeVar("T")


class FieldReader:
    """The typed readers, and the problems they found so far."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def error(self, node: Located, message: str, *, at_key: bool = False) -> None:
        line, col = (node.key_line, node.key_column) if at_key and node.key_line else (node.line, node.column)
        self.problems.append(Problem(self.file, line, col, node.path, message))

    def mapping(self, node: Located, allowed: tuple[str, ...], what: str) -> dict[str, Located] | None:
        if not isinstance(node.value, dict):
            self.error(node, f"{what} must be a mapping (key: value), not {_kind(node.value)}")
            return None
        for key, item in node.value.items():
            if key not in allowed:
                close = did_you_mean(key, allowed)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
                self.error(item, f"unknown key {shown(key)} in {what}{hint}", at_key=True)
        return dict(node.value)

    def typed(self, node: Located, kind: type[T] | tuple[type, ...], what: str) -> T | None:
        value = node.value
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.error(node, f"{what} must be a number, not a boolean")
            return None
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.error(node, f"{what} must be {_article(names)}, not {_kind(value)} ({shown(value)})")
            return None
        return value  # type: ignore[return-value]

    def integer(self, node: Located, what: str, lo: int, hi: int, hint: str = "") -> int | None:
        value = self.typed(node, int, what)
        if value is None:
            return None
        if not lo <= value <= hi:
            self.error(node, f"{what} {shown(value)} is out of range {lo}..{hi}{hint}")
            return None
        return value

    def duration(self, node: Located, what: str) -> float | None:
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := DURATION_RE.match(value)):
            seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
        else:
            self.error(node, f"{what} must be a duration such as 500ms, 2s or 1m, not {shown(value)}")
            return None
        lo, hi = DURATION_BOUNDS.get(what, OTHER_DURATIONS)
        if not lo <= seconds <= hi:  # also false for .nan
            self.error(
                node,
                f"{what} must be from {format_duration(lo)} to {format_duration(hi)}, not {shown(value)}",
            )
            return None
        return seconds

    def choice(self, node: Located, what: str, choices: tuple[str, ...]) -> str | None:
        value = node.value
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        close = did_you_mean(value, choices) if isinstance(value, str) else []
        hint = f"; did you mean '{close[0]}'?" if close else ""
        self.error(node, f"{what} must be one of {', '.join(choices)}, not {shown(value)}{hint}")
        return None

    def boolean(self, node: Located, what: str) -> bool | None:
        return self.typed(node, bool, what)

    def address(self, node: Located, what: str) -> IPAddress | None:
        try:
            return parse_ip(str(node.value).strip())
        except ValueError:
            self.error(node, f"{what} {shown(node.value)} is not an IPv4 or IPv6 address")
            return None


def format_duration(seconds: float) -> str:
    """Seconds as the config writes them: 100ms, 2s, 1m, 1h."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> list[str]:
    """The closest choice, if any is close (difflib is imported only when a config has a typo)."""
    import difflib

    return difflib.get_close_matches(word, choices, n=1)


def _kind(value: object) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "empty",
    }.get(
        type(value),
        "a date (quote it to make it a string)" if isinstance(value, date) else type(value).__name__,
    )


def _article(name: str) -> str:
    return {"str": "a string", "int": "a whole number", "bool": "true or false", "float": "a number"}.get(
        name, name
    )
