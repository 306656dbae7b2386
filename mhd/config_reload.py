"""Reloading a large config in time proportional to the edit, not to the file.

A reload that changes one weight among 16,000 servers should not re-read 22,000 lines of YAML: under
qemu that alone took 14 s, against a 1% budget of the cold apply. `ConfigReloader` remembers the text
of the last good load and where each item of the top-level `services` list starts. When the new text
differs only inside that list, the changed items are re-parsed on their own (their lines keep their
numbers, so errors still point at the right place) and validated against the defaults of the last
load; every other service is reused as it is.

The shortcut is taken only when it is provably equivalent to a full load: block-style `services`, no
anchors or aliases, changed lines that cannot end the list or reach outside it, no error and no
duplicate name or virtual service in the result. Anything else, including every invalid file, takes
the full path, whose errors are the authoritative ones. The tests compare both paths on random edits.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .checkspec import CheckSpec
from .config import Config, ServiceConfig, _Validator, load, validate
from .model import ServiceKey
from .yamlsource import ConfigError, Located, compose, gc_paused, locate

# An anchor (&a) or alias (*a) ties distant parts of the file together: no shortcut then. This also
# matches a few harmless strings (a URL with &); they only cost a full load.
_ANCHOR_OR_ALIAS = re.compile(r"(?:^|[\s\[{,])[&*][^\s,\[\]{}]", re.MULTILINE)
# Line breaks other than \n and \r\n would make our line numbers differ from the YAML parser's.
_OTHER_BREAKS = re.compile("\r(?!\n)|[\x85\u2028\u2029]")


@dataclass(frozen=True)
class _Snapshot:
    """The last good load, and the layout of its `services` list (0-based line numbers)."""

    path: str
    mh_slots: int | None  # as passed by the caller
    lines: list[str]  # the text split on "\n"
    config: Config
    column: int  # of the list's "-" indicators
    starts: list[int]  # the "-" line of each service
    end: int  # the line after the list (exclusive)
    defaults: dict[str, Located]
    default_check: CheckSpec
    slots: int | None  # the MH table size the validator used
    names: frozenset[str]  # of every service: an edit must not duplicate one
    keys: frozenset[ServiceKey]


class ConfigReloader:
    """`load(path)` as often as you like; each call after the first costs what the edit costs."""

    def __init__(self, mh_slots: int | None = None) -> None:
        self.mh_slots = mh_slots
        self._last: _Snapshot | None = None
        self.incremental_loads = 0  # how many loads took the shortcut (tests and status)
        # After a shortcut: the services the edit replaced, and their replacements (None after a
        # full load). The daemon adopts just those instead of comparing 1,000 services.
        self.replaced: tuple[tuple[ServiceConfig, ...], tuple[ServiceConfig, ...]] | None = None

    def load(self, path: str | Path) -> Config:
        """Read and validate `path`, like `mhd.config.load`. Raises ConfigError listing every problem."""
        file = str(path)
        try:
            data = Path(path).read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return load(path, self.mh_slots)  # its error says what went wrong
        sha256 = hashlib.sha256(data).hexdigest()
        last = self._last
        self.replaced = None
        if last is not None and last.path == file and last.mh_slots == self.mh_slots:
            edited = _edited(last, text, sha256)
            if edited is not None:
                self.incremental_loads += 1
                self._last, self.replaced = edited.snapshot, edited.replaced
                return edited.snapshot.config
        self._last = None
        with gc_paused():
            root = compose(text, file)
            tree = Located({}, 1, 1) if root is None else locate(root, "", file)
        config, validator = validate(tree, file, self.mh_slots, sha256)
        self._last = _snapshot(file, self.mh_slots, text, root, config, validator)
        return config


def _snapshot(
    file: str, mh_slots: int | None, text: str, root: yaml.Node | None, config: Config, v: _Validator
) -> _Snapshot | None:
    """What a later load needs to re-read only the changed services; None when no shortcut is safe."""
    if root is None or _ANCHOR_OR_ALIAS.search(text) or _OTHER_BREAKS.search(text):
        return None
    services = next((value for key, value in root.value if key.value == "services"), None)
    if not isinstance(services, yaml.SequenceNode) or services.flow_style or not services.value:
        return None
    lines = text.split("\n")
    column = services.start_mark.column
    end = services.end_mark.line + (1 if services.end_mark.column else 0)
    starts = _item_lines(lines, services.start_mark.line, end, column)
    if starts is None or not len(starts) == len(services.value) == len(config.services):
        return None
    names = frozenset(s.name for s in config.services)
    keys = frozenset(s.key for s in config.services)
    return _Snapshot(
        file, mh_slots, lines, config, column, starts, end, v.defaults, v.default_check, v.mh_slots, names, keys
    )


def _item_lines(lines: list[str], first: int, end: int, column: int) -> list[int] | None:
    """The lines that start an item ("- " at `column`) in [first, end); None if any line between
    could end the list or be read differently on its own (less indented, a document marker, a tab)."""
    starts: list[int] = []
    for n in range(first, min(end, len(lines))):
        line = lines[n]
        body = line.lstrip(" ")
        if not body.strip() or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if body[0] == "\t" or indent < column:
            return None
        if indent == column:
            if body.startswith(("---", "...")) or not (body.startswith("- ") or body.rstrip("\r") == "-"):
                return None
            starts.append(n)
    return starts


_BLOCK = 256  # lines compared per step: list slices compare in C, a line-by-line loop would not


def _common_prefix(a: list[str], b: list[str], limit: int) -> int:
    """How many leading lines `a` and `b` share (at most `limit`)."""
    n = 0
    while n + _BLOCK <= limit and a[n : n + _BLOCK] == b[n : n + _BLOCK]:
        n += _BLOCK
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: list[str], b: list[str], limit: int) -> int:
    """How many trailing lines `a` and `b` share (at most `limit`)."""
    n, la, lb = 0, len(a), len(b)
    while n + _BLOCK <= limit and a[la - n - _BLOCK : la - n] == b[lb - n - _BLOCK : lb - n]:
        n += _BLOCK
    while n < limit and a[la - n - 1] == b[lb - n - 1]:
        n += 1
    return n


@dataclass(frozen=True)
class _Edit:
    snapshot: _Snapshot  # with the new config
    replaced: tuple[tuple[ServiceConfig, ...], tuple[ServiceConfig, ...]]


def _edited(last: _Snapshot, text: str, sha256: str) -> _Edit | None:
    """The new config if the edit stays within the services list and re-reads cleanly, else None."""
    old, new = last.lines, text.split("\n")
    if old == new:
        return _Edit(replace(last, config=replace(last.config, sha256=sha256)), ((), ()))
    head = _common_prefix(old, new, min(len(old), len(new)))
    tail = _common_suffix(old, new, min(len(old), len(new)) - head)
    changed_end = len(old) - tail  # old lines [head, changed_end) became new lines [head, len(new) - tail)
    edit = "\n".join(new[head : len(new) - tail]) + "\n"  # the rest was checked when `last` was taken
    if _ANCHOR_OR_ALIAS.search(edit) or _OTHER_BREAKS.search(edit):
        return None
    if head < last.starts[0] or changed_end > last.end or head > last.end:
        return None
    first = bisect.bisect_right(last.starts, head) - 1
    after = max(bisect.bisect_left(last.starts, changed_end), first + 1)  # first untouched item
    delta = len(new) - len(old)
    stop = (last.starts[after] if after < len(last.starts) else last.end) + delta
    start = last.starts[first]
    fresh = _reread(last, new, start, stop, first, text_file=last.path)
    if fresh is None:
        return None
    services, starts = fresh
    dropped = last.config.services[first:after]
    merged = last.config.services[:first] + services + last.config.services[after:]
    if not merged:
        return None  # nothing left to anchor the next shortcut on
    # Unique names and virtual services, hashing only the services the edit touched.
    names = last.names - {s.name for s in dropped}
    keys = last.keys - {s.key for s in dropped}
    new_names, new_keys = {s.name for s in services}, {s.key for s in services}
    if len(new_names) != len(services) or len(new_keys) != len(services) or names & new_names or keys & new_keys:
        return None  # the full load names both places
    config = replace(last.config, services=merged, sha256=sha256)
    layout = last.starts[:first] + starts + [n + delta for n in last.starts[after:]]
    snapshot = replace(
        last, lines=new, config=config, starts=layout, end=last.end + delta,
        names=names | new_names, keys=keys | new_keys,
    )  # fmt: skip
    return _Edit(snapshot, (dropped, services))


def _reread(
    last: _Snapshot, new: list[str], start: int, stop: int, index: int, text_file: str
) -> tuple[tuple[ServiceConfig, ...], list[int]] | None:
    """Parse and validate new lines [start, stop) as services number `index`, ...; None on any doubt."""
    starts = _item_lines(new, start, stop, last.column)
    if starts is None or (starts and starts[0] != _first_content(new, start, stop)):
        return None
    snippet = "\n" * start + "\n".join(new[start:stop])
    try:
        with gc_paused():
            root = compose(snippet, text_file)
            if not starts:
                return ((), []) if root is None else None
            if not isinstance(root, yaml.SequenceNode) or root.flow_style or len(root.value) != len(starts):
                return None
            if root.start_mark.column != last.column:
                return None
            items = [locate(node, f"services[{index + k}]", text_file) for k, node in enumerate(root.value)]
    except ConfigError:
        return None
    v = _Validator(text_file, last.slots)
    v.default_check = last.default_check
    services = tuple(s for item in items if (s := v.service(item, last.defaults)) is not None)
    if v.problems or len(services) != len(items):
        return None
    return services, starts


def _first_content(lines: list[str], start: int, stop: int) -> int:
    """The first line in [start, stop) that is neither blank nor a comment (stop if none)."""
    for n in range(start, stop):
        body = lines[n].strip()
        if body and not body.startswith("#"):
            return n
    return stop
