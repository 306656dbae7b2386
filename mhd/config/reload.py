"""Reloading a large config in time proportional to the edit, not to the file.

A reload that changes one weight among 16,000 servers should not re-read 22,000 lines of YAML: under
qemu that alone took 14 s, against a 1% budget of the cold apply. `ConfigReloader` remembers the bytes
of the last good load and where each item of the top-level `services` list starts (byte offset and
line). The new bytes are compared with the old ones in C (block slices); when they differ only inside
that list, the changed items are decoded and re-parsed on their own (their lines keep their numbers,
so errors still point at the right place) and validated against the defaults of the last load; every
other service is reused as it is. Nothing else in the file is decoded, split or parsed again.

The shortcut is taken only when it is provably equivalent to a full load: block-style `services`, no
anchors or aliases, changed lines that cannot end the list or reach outside it, no error and no
duplicate name or virtual service in the result. Anything else, including every invalid file, takes
the full path, whose errors are the authoritative ones. The tests compare both paths on random edits.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from mhd.config.diff import Replaced, reuse_unchanged
from mhd.config.records import Config, ServiceConfig
from mhd.config.validate import Inherited, load, validate, validate_services
from mhd.config.yamlsource import (
    MAX_NODES,
    ConfigError,
    Located,
    NodeBudget,
    compose,
    gc_paused,
    locate,
    read,
)
from mhd.model import ServiceKey

# An anchor (&a) or alias (*a) ties distant parts of the file together: no shortcut then. This also
# matches a few harmless strings (a URL with &); they only cost a full load.
_ANCHOR_OR_ALIAS = re.compile(r"(?:^|[\s\[{,])[&*][^\s,\[\]{}]", re.MULTILINE)
# Line breaks other than \n and \r\n would make our line numbers differ from the YAML parser's.
_OTHER_BREAKS = re.compile("\r(?!\n)|[\x85\u2028\u2029]")


@dataclass(frozen=True)
class _Snapshot:
    """The last good load, and the layout of its `services` list."""

    path: str
    mh_slots: int | None  # as passed by the caller
    data: bytes  # the file
    config: Config
    column: int  # of the list's "-" indicators
    starts: list[int]  # byte offset of the line that starts each service ("- ...")
    lines: list[int]  # 0-based number of that line
    end: int  # byte offset of the line after the list
    inherited: Inherited  # what an edited service is validated against
    names: frozenset[str]  # of every service: an edit must not duplicate one
    keys: frozenset[ServiceKey]
    nodes: int  # YAML values read (after edits an upper bound): MAX_NODES bounds the whole file




@dataclass(frozen=True)
class _Edit:
    snapshot: _Snapshot  # with the new config
    replaced: Replaced


class ConfigReloader:
    """`load(path)` as often as you like; each call after the first costs what the edit costs."""

    def __init__(self, mh_slots: int | None = None) -> None:
        self.mh_slots = mh_slots
        self._last: _Snapshot | None = None
        self.incremental_loads = 0  # how many loads took the shortcut (tests and status)
        self.piecewise_loads = 0  # how many whole loads read the services list a group at a time
        # After a shortcut: the services the edit replaced, and their replacements (None after a
        # full load). The daemon adopts just those instead of comparing 1,000 services.
        self.replaced: Replaced | None = None
        self._previous: Config | None = None  # the last config returned, by either path

    def load(self, path: str | Path) -> Config:
        """Read and validate `path`, like `mhd.config.validate.load`. Raises ConfigError listing every problem.

        Services equal to the previous load's are that load's very objects (`reuse_unchanged`)."""
        config = self._load(path)
        self._previous = config
        return config

    def _load(self, path: str | Path) -> Config:
        file = str(path)
        data = read(path)
        sha256 = hashlib.sha256(data).hexdigest()
        last = self._last
        self.replaced = None
        if last is not None and last.path == file and last.mh_slots == self.mh_slots:
            edited = _edited(last, data, sha256)
            if edited is not None:
                self.incremental_loads += 1
                self._last, self.replaced = edited.snapshot, edited.replaced
                return edited.snapshot.config
        self._last = None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return load(path, self.mh_slots)
        with gc_paused():  # as in config.loads: no collections over the trees being built
            piecewise = _piecewise(file, self.mh_slots, data, text, sha256)
            snapshot: _Snapshot | None
            if piecewise is not None:
                self.piecewise_loads += 1
                config, snapshot = piecewise
            else:
                root = compose(text, file)
                budget = NodeBudget()
                tree = Located({}, 1, 1) if root is None else locate(root, "", file, budget)
                config, inherited = validate(tree, file, self.mh_slots, sha256)
                snapshot = _snapshot(file, self.mh_slots, data, text, root, config, inherited, budget.used)
            if self._previous is not None:
                config = replace(config, services=reuse_unchanged(self._previous.services, config.services))
        self._last = None if snapshot is None else replace(snapshot, config=config)
        return config


# The `services:` key of the top-level mapping, alone on its line (its list in block style below).
_SERVICES_KEY = re.compile(r"services[ \t]*:[ \t]*(?:#.*)?\r?")
_GROUP = 64  # services composed at once by a piecewise load: enough to amortise the prefix below


def _piecewise(
    file: str, mh_slots: int | None, data: bytes, text: str, sha256: str
) -> tuple[Config, _Snapshot] | None:
    """A whole load that never holds the whole file's node tree: the file without its services
    list, then the list `_GROUP` items at a time, each validated and dropped before the next.

    Why: PyYAML's nodes, their marks and the `Located` tree cost ~3 KB per server while they all
    live at once; at 100,000 servers that peak was 340 MB, and the freed memory stayed resident.
    The shortcut is taken only under the conditions of the reload shortcut (block-style list, no
    anchors or aliases, no line that could end the list early) and only when everything reads
    without a problem and without a duplicate; anything else returns None and takes the full
    load, whose errors are the authoritative ones. The tests compare both on random files."""
    if _ANCHOR_OR_ALIAS.search(text) or _OTHER_BREAKS.search(text):
        return None
    lines = text.split("\n")
    keys = [n for n, line in enumerate(lines) if _SERVICES_KEY.fullmatch(line)]
    if len(keys) != 1:
        return None
    key = keys[0]
    first = key + 1 + _first_content(lines[key + 1 :])
    if first >= len(lines):
        return None
    column = len(lines[first]) - len(lines[first].lstrip(" "))
    end = _list_end(lines, first, column)
    starts = _item_lines(lines, first, end, column)
    if not starts or starts[0] != first:
        return None
    budget = NodeBudget()  # one for the whole file, as the full load's
    try:
        root = compose("\n".join(lines[: key + 1] + [""] * (end - key - 1) + lines[end:]), file)
        if root is None:
            return None
        config, inherited = validate(locate(root, "", file, budget), file, mh_slots, sha256)
    except ConfigError:
        return None
    if config.services:
        return None
    offsets = _line_offsets(data, end)
    services: list[ServiceConfig] = []
    for g in range(0, len(starts), _GROUP):
        group = starts[g : g + _GROUP]
        stop = starts[g + _GROUP] if g + _GROUP < len(starts) else end
        raw = data[offsets[group[0]] : offsets[stop]]
        parsed = _reread(file, column, inherited, raw, group[0], g, len(group), budget)
        if parsed is None:
            return None
        services += parsed
    names = frozenset(s.name for s in services)
    keys_ = frozenset(s.key for s in services)
    if len(names) != len(services) or len(keys_) != len(services):
        return None  # the full load names both places
    config = replace(config, services=tuple(services))
    snapshot = _Snapshot(
        file, mh_slots, data, config, column, [offsets[n] for n in starts], starts, offsets[end],
        inherited, names, keys_, budget.used,
    )  # fmt: skip
    return config, snapshot


def _list_end(lines: list[str], first: int, column: int) -> int:
    """The line after a block list whose items start at `column` from line `first`: the first
    line of content less indented, or as indented but not an item."""
    for n in range(first, len(lines)):
        line = lines[n]
        body = line.lstrip(" ")
        if not body.strip() or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if indent < column or (indent == column and not (body.startswith("- ") or body.rstrip("\r") == "-")):
            return n
    return len(lines)


def _snapshot(
    file: str,
    mh_slots: int | None,
    data: bytes,
    text: str,
    root: yaml.Node | None,
    config: Config,
    inherited: Inherited,
    nodes: int,
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
    offsets = _line_offsets(data, end)
    names = frozenset(s.name for s in config.services)
    keys = frozenset(s.key for s in config.services)
    return _Snapshot(
        file, mh_slots, data, config, column, [offsets[n] for n in starts], starts, offsets[end],
        inherited, names, keys, nodes,
    )  # fmt: skip


def _line_offsets(data: bytes, upto: int) -> list[int]:
    """Byte offset of each line 0..upto (a line past the end starts at len(data))."""
    offsets = [0]
    for _ in range(upto):
        nl = data.find(b"\n", offsets[-1])
        offsets.append(len(data) if nl < 0 else nl + 1)
    return offsets


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


_BLOCK = 1 << 16  # bytes compared per step: slices compare in C, a byte-by-byte loop would not


def _common_prefix(a: bytes, b: bytes, limit: int) -> int:
    """How many leading bytes `a` and `b` share (at most `limit`): blocks, then halving in one."""
    n = 0
    while n + _BLOCK <= limit and a[n : n + _BLOCK] == b[n : n + _BLOCK]:
        n += _BLOCK
    hi = min(limit, n + _BLOCK)
    while n < hi:  # a[:n] == b[:n] and the first difference, if any, is before hi
        mid = (n + hi + 1) // 2
        if a[n:mid] == b[n:mid]:
            n = mid
        else:
            hi = mid - 1
    return n


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """How many trailing bytes `a` and `b` share (at most `limit`)."""
    la, lb = len(a), len(b)
    n = 0
    while n + _BLOCK <= limit and a[la - n - _BLOCK : la - n] == b[lb - n - _BLOCK : lb - n]:
        n += _BLOCK
    hi = min(limit, n + _BLOCK)
    while n < hi:
        mid = (n + hi + 1) // 2
        if a[la - mid : la - n] == b[lb - mid : lb - n]:
            n = mid
        else:
            hi = mid - 1
    return n


def _line_start(data: bytes, offset: int) -> bool:
    return offset == 0 or data[offset - 1 : offset] == b"\n"


def _edited(last: _Snapshot, data: bytes, sha256: str) -> _Edit | None:
    """The new config if the edit stays within the services list and re-reads cleanly, else None."""
    old = last.data
    if old == data:
        return _Edit(replace(last, config=replace(last.config, sha256=sha256)), ((), ()))
    shorter = min(len(old), len(data))
    head = _common_prefix(old, data, shorter)
    tail = _common_suffix(old, data, shorter - head)
    # Whole lines: from the start of the line the change begins in, to the end of the line the
    # unchanged tail begins in (old bytes [start, old_end) became new bytes [start, old_end + delta)).
    start = old.rfind(b"\n", 0, head) + 1
    delta = len(data) - len(old)
    old_end = len(old) - tail
    if not (_line_start(old, old_end) and _line_start(data, old_end + delta)):
        nl = old.find(b"\n", old_end)  # the change ends mid-line: take the rest of that line
        old_end = len(old) if nl < 0 else nl + 1
    if start < last.starts[0] or old_end > last.end:
        return None
    first = bisect.bisect_right(last.starts, start) - 1
    after = max(bisect.bisect_left(last.starts, old_end), first + 1)  # first untouched item
    stop = last.starts[after] if after < len(last.starts) else last.end
    raw = data[last.starts[first] : stop + delta]
    items = _split(last, raw)
    if items is None:
        return None
    old_items = [old[a:b] for a, b in itertools.pairwise([*last.starts[first:after], stop])]
    base_line = last.lines[first]
    services: list[ServiceConfig] = []
    gone: list[ServiceConfig] = []
    came: list[ServiceConfig] = []
    # Items whose bytes did not change are the very same services; only the others are parsed.
    # A file regenerated whole to change 50 services of 1,000 costs those 50, not the span.
    import difflib  # reloads only: not part of the daemon's start

    # What the re-read items may add: counted on top of the last total (the replaced items' own
    # count is not kept), so a file near MAX_NODES takes the full load, which judges exactly.
    budget = NodeBudget(MAX_NODES - last.nodes)
    matcher = difflib.SequenceMatcher(None, old_items, [raw[a:b] for a, b, _ in items], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        kept = last.config.services[first + i1 : first + i2]
        run: tuple[ServiceConfig, ...] = ()
        if tag == "equal":
            run = kept
        elif j1 < j2:  # replaced or inserted items (a deletion has none)
            parsed = _reread(last.path, last.column, last.inherited, raw[items[j1][0] : items[j2 - 1][1]],
                             base_line + items[j1][2], first + j1, j2 - j1, budget)  # fmt: skip
            if parsed is None:
                return None
            run = reuse_unchanged(kept, parsed)  # reformatted, or only a comment changed
        same = {id(x) for x in kept} & {id(x) for x in run}
        gone += [x for x in kept if id(x) not in same]
        came += [x for x in run if id(x) not in same]
        services += run
    where = (first, after, start, old_end, delta)
    return _merged(last, data, sha256, where, services, gone, came, items, last.nodes + budget.used)


def _merged(
    last: _Snapshot,
    data: bytes,
    sha256: str,
    where: tuple[int, int, int, int, int],
    services: list[ServiceConfig],
    gone: list[ServiceConfig],
    came: list[ServiceConfig],
    items: list[tuple[int, int, int]],
    nodes: int,
) -> _Edit | None:
    """The new snapshot once services [first, after) became `services` (`nodes`: the values it
    has now, an upper bound): None if the result needs the full load (no service left, or a
    duplicate name or virtual service, which it reports)."""
    first, after, start, old_end, delta = where
    old = last.data
    merged = last.config.services[:first] + tuple(services) + last.config.services[after:]
    if not merged:
        return None  # nothing left to anchor the next shortcut on
    # Unique names and virtual services, hashing only the services the edit touched.
    names = last.names - {s.name for s in gone}
    keys = last.keys - {s.key for s in gone}
    new_names, new_keys = {s.name for s in came}, {s.key for s in came}
    if len(new_names) != len(came) or len(new_keys) != len(came) or names & new_names or keys & new_keys:
        return None  # the full load names both places
    line_delta = data.count(b"\n", start, old_end + delta) - old.count(b"\n", start, old_end)
    base_offset, base_line = last.starts[first], last.lines[first]
    snapshot = replace(
        last, data=data, config=last.config.edited(merged, sha256, tuple(gone), tuple(came)),
        starts=last.starts[:first] + [base_offset + a for a, _, _ in items] + [o + delta for o in last.starts[after:]],
        lines=last.lines[:first] + [base_line + n for _, _, n in items] + [n + line_delta for n in last.lines[after:]],
        end=last.end + delta, names=names | new_names, keys=keys | new_keys, nodes=nodes,
    )  # fmt: skip
    return _Edit(snapshot, (tuple(gone), tuple(came)))


def _split(last: _Snapshot, raw: bytes) -> list[tuple[int, int, int]] | None:
    """`raw`, whole lines that start where a service started, cut into its items: for each, its
    byte range in `raw` and its first line (from 0). None on any doubt (anchors, odd line breaks,
    a line that ends the list)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _ANCHOR_OR_ALIAS.search(text) or _OTHER_BREAKS.search(text):
        return None
    lines = text.split("\n")
    starts = _item_lines(lines, 0, len(lines), last.column)
    # Only blank lines and comments before the first item (with no item at all, anywhere): a line
    # of content there would continue the service before the span.
    if starts is None or (starts[0] if starts else len(lines)) != _first_content(lines):
        return None
    offsets = _line_offsets(raw, starts[-1]) if starts else [0]
    bounds = [offsets[n] for n in starts] + [len(raw)]
    return [(bounds[k], bounds[k + 1], n) for k, n in enumerate(starts)]


def _reread(
    file: str, column: int, inherited: Inherited, raw: bytes, base_line: int, index: int, count: int,
    budget: NodeBudget,
) -> tuple[ServiceConfig, ...] | None:
    """Parse and validate `raw` (the `count` items from service number `index` on, at `column`,
    whose first line is `base_line` of the file, so that errors keep their line numbers): None on
    any doubt."""
    try:
        with gc_paused():
            root = compose("\n" * base_line + raw.decode("utf-8"), file)
            if not isinstance(root, yaml.SequenceNode) or root.flow_style or len(root.value) != count:
                return None
            if root.start_mark.column != column:
                return None
            items = [locate(node, f"services[{index + k}]", file, budget) for k, node in enumerate(root.value)]
        return validate_services(items, file, inherited)
    except ConfigError:
        return None


def _first_content(lines: list[str]) -> int:
    """The first line that is neither blank nor a comment (len(lines) if none)."""
    for n, line in enumerate(lines):
        body = line.strip()
        if body and not body.startswith("#"):
            return n
    return len(lines)
