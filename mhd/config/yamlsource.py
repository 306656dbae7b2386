"""YAML with positions: every value remembers where it was written.

The config layer validates a tree of `Located` values so that each error can name file:line:column and
the key path, which is what an operator needs to fix a file at 3 a.m. PyYAML's composer already knows
the marks; this module keeps them instead of throwing them away as `safe_load` does.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config, with where it is and how to fix it."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # key path such as services[0].servers[2].weight
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config is invalid; `problems` lists every error found in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


MAX_BYTES = 4 << 20  # 5x the largest benchmarked file; etc/mhd.yaml names this bound


def read(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a config file, which must be a regular file of at most MAX_BYTES.

    Opened non-blocking so that a FIFO without a writer cannot hang a reload, and refused unless it
    is a regular file: /dev/zero or a pipe would otherwise be read until memory runs out."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            msg = f"cannot read: {kind} ({stat.filemode(info.st_mode)}); give the path of the config file"
            raise ConfigError([Problem(file, 0, 0, "", msg)])
        chunks: list[bytes] = []
        size = 0 if info.st_size <= MAX_BYTES else info.st_size  # too big: do not read it at all
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):  # it may grow after fstat
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        size = max(info.st_size, size)
        msg = f"the file is {size:,} bytes, more than the limit of {MAX_BYTES:,} ({MAX_BYTES >> 20} MiB): split it"
        raise ConfigError([Problem(file, 0, 0, "", msg)])
    return data


@dataclass
class Located:
    """A YAML value with its position. Mappings hold `Located` values, sequences `Located` items."""

    value: Any
    line: int
    column: int
    path: str = ""
    key_line: int = field(default=0)
    key_column: int = field(default=0)


class _Constructor(SafeConstructor):
    pass


_CONSTRUCTOR = _Constructor()
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"

# libyaml's parser and composer when PyYAML was built with it (Debian's python3-yaml is), with the
# *base* resolver: PyYAML's safe resolver runs Python code for every node, which dominated the load
# of a 16,000-server file. Plain scalars are typed below with the safe resolver's own table, so the
# values are exactly what SafeLoader gives.
_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers
_PLAIN = "!mhd-plain"  # an untagged plain scalar, typed later by _implicit_tag


class _PlainMarkingResolver(yaml.resolver.BaseResolver):
    """Leaves plain scalars recognisable (explicit tags such as !!str keep theirs) and does no
    other work: the C composer calls this once per node."""

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]


if yaml.__with_libyaml__:  # Debian's python3-yaml and PyPI's wheels have libyaml
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    class _Loader(CParser, yaml.constructor.BaseConstructor, _PlainMarkingResolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.BaseConstructor.__init__(self)
            _PlainMarkingResolver.__init__(self)

else:  # pure-Python PyYAML: the same pipeline, slower

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        yaml.constructor.BaseConstructor,
        _PlainMarkingResolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.BaseConstructor.__init__(self)
            _PlainMarkingResolver.__init__(self)


@functools.lru_cache(maxsize=65536)
def _implicit_tag(value: str) -> str:
    """The tag YAML 1.1 (SafeLoader) gives a plain scalar: int, bool, null, float, ... or str.

    Memoised: in a 16,000-server file three plain scalars in four are repeats, and the resolver's
    regular expressions were a third of building the positioned tree (0.15 s -> 0.13 s for that
    file on the host, in a fresh process)."""
    for tag, regexp in _IMPLICIT.get(value[:1] if value else "", []) + _IMPLICIT.get(None, []):
        if regexp.match(value):
            return str(tag)
    return _STR


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Tens of thousands of small objects and no cycles: the collector would only rescan them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse(text: str, file: str) -> Located:
    """Parse YAML text into a `Located` tree; a syntax error becomes a ConfigError with its position."""
    with gc_paused():
        node = compose(text, file)
        return Located({}, 1, 1) if node is None else locate(node, "", file)


def compose(text: str, file: str) -> yaml.Node | None:
    """The raw node tree (None for an empty document); a syntax error becomes a ConfigError.

    Callers that need marks the `Located` tree drops (end lines, flow style) read them here."""
    try:
        return yaml.compose(text, Loader=_Loader)  # type: ignore[arg-type]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError([Problem(file, line, col, "", msg)]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        msg = f"character U+{char:04X} is not allowed in YAML ({exc.reason}): remove it"
        raise ConfigError([Problem(file, line, col, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, 1, "", f"YAML error: {exc}")]) from None
    except (RecursionError, UnicodeError) as exc:  # the pure-Python composer recurses per level
        raise ConfigError([Problem(file, 1, 1, "", f"cannot parse this file: {exc}")]) from None


def _position(text: str, exc: yaml.reader.ReaderError) -> tuple[int, int]:
    """Line and column of the character a ReaderError names.

    libyaml gives a byte offset, PyYAML a character index; the reader stops at the first such
    character, so finding it in the text is right for both."""
    index = text.find(chr(exc.character)) if isinstance(exc.character, int) else -1
    if index < 0:
        return 1, 1
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


@dataclass
class NodeBudget:
    """How many more values a file may expand to (`MAX_NODES` in all). A file read in parts (a
    reload's edited services, a big file's services a group at a time) passes one budget to every
    part, so that the parts are bounded together as a whole load is."""

    left: int = field(default_factory=lambda: MAX_NODES)
    start: int = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.left

    @property
    def used(self) -> int:
        """Values taken from this budget (not from MAX_NODES: a reload's budget starts lower)."""
        return self.start - self.left


def locate(node: yaml.Node, path: str, file: str, budget: NodeBudget | None = None) -> Located:
    """A composed node as a `Located` tree whose key paths start at `path` (its values taken from
    `budget`, a fresh `MAX_NODES` by default)."""
    builder = _Builder(file, budget.left if budget is not None else MAX_NODES)
    try:
        tree = builder.convert(node, path, 0)
    finally:
        if budget is not None:
            budget.left = builder.left
    if builder.problems:
        raise ConfigError(builder.problems)
    return tree


# Bounds on what one file may cost (etc/mhd.yaml names them). An alias repeats its anchor's whole
# subtree, so ten lines of aliases of aliases expand to 10^9 values ("billion laughs"): the number of
# values after expansion is bounded, not only the bytes. The largest benchmarked file (1,000 services
# x 16 servers, 0.8 MB) has 95,000 values and 6 levels.
MAX_NODES = 500_000
MAX_DEPTH = 64
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_MERGE = "tag:yaml.org,2002:merge"


def short_tag(tag: str) -> str:
    """`tag:yaml.org,2002:int` as the operator wrote it, `!!int`."""
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def plain(value: Any) -> Any:
    """A `Located` value without its positions: what the operator wrote, for messages."""
    if isinstance(value, Located):
        value = value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime.date):  # an unquoted 2001-12-14 is a YAML timestamp
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    return value


def shown(value: Any, limit: int = 60) -> str:
    """`value` for an error message: its YAML-ish repr without positions, cut at `limit` characters."""
    text = repr(plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Builder:
    """Builds the `Located` tree of one document, collecting problems, within the bounds above."""

    def __init__(self, file: str, left: int = MAX_NODES) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.left = left

    def problem(self, node: yaml.Node, path: str, message: str) -> None:
        self.problems.append(
            Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, path, message)
        )

    def convert(self, node: yaml.Node, path: str, depth: int) -> Located:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.left -= 1
        if self.left < 0:  # stop at once: going on is what costs minutes and gigabytes
            self.exhausted(line, col, path)
        if node.__class__ is yaml.ScalarNode:  # most nodes, and most of them plain strings
            tag = _implicit_tag(node.value) if node.tag == _PLAIN else node.tag
            return Located(node.value if tag == _STR else self.scalar(node, tag, path), line, col, path)
        if depth > MAX_DEPTH:
            self.problem(
                node, path, f"nested more than {MAX_DEPTH} levels deep (an alias inside its own anchor?)"
            )
            return Located(None, line, col, path)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                self.problem(
                    node, path, f"the tag {short_tag(node.tag)} is not supported on a mapping: remove it"
                )
            return Located(self.mapping(node, path, depth), line, col, path)
        if node.tag != _SEQ:
            self.problem(node, path, f"the tag {short_tag(node.tag)} is not supported on a list: remove it")
        items = [self.convert(n, f"{path}[{i}]", depth + 1) for i, n in enumerate(node.value)]
        return Located(items, line, col, path)

    def exhausted(self, line: int, col: int, path: str) -> NoReturn:
        msg = (
            f"this file expands to more than {MAX_NODES:,} values (aliases that repeat aliases?): "
            "write the repeated parts out, or split the file"
        )
        raise ConfigError([*self.problems, Problem(self.file, line, col, path, msg)])

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Located]:
        out: dict[str, Located] = {}
        for key_node, value_node in node.value:
            if (
                key_node.__class__ is yaml.ScalarNode
                and key_node.tag == _PLAIN
                and _implicit_tag(key_node.value) == _STR
            ):
                key = key_node.value  # the usual key: a plain string, no Located needed
            else:
                raw = self.convert(key_node, path, depth + 1).value
                if isinstance(raw, dict | list):
                    self.problem(key_node, path, f"a key must be a plain value, not {shown(raw)}")
                key = str(plain(raw))
            name = key if len(key) <= 80 else key[:77] + "..."  # the path is for messages
            sub = f"{path}.{name}" if path else name
            if key in out:
                self.problem(key_node, sub, "duplicate key: remove one of the two")
            item = self.convert(value_node, sub, depth + 1)
            item.key_line, item.key_column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            out[key] = item
        return out

    def scalar(self, node: yaml.Node, tag: str, path: str) -> Any:
        """A scalar that is not a string: typed by its tag, or a problem and None."""
        explicit = node.tag != _PLAIN
        value = node.value
        if (
            tag == _INT
            and value.isascii()
            and value.isdigit()
            and (value[0] != "0" or value == "0")
            and len(value) < 100
        ):
            return int(value)  # not octal, not too long for int() (Python refuses 4,300 digits)
        if tag == _MERGE:
            self.problem(node, path, "merge keys (<<) are not supported: write the keys out")
            return None
        if explicit and tag not in _SCALAR_TAGS:
            self.problem(
                node,
                path,
                f"the tag {short_tag(tag)} is not supported: mhd reads strings, numbers, "
                "true/false and null; remove the tag",
            )
            return None
        try:
            return _CONSTRUCTOR.construct_object(yaml.ScalarNode(tag, value, node.start_mark, node.end_mark))
        except Exception as exc:  # PyYAML's constructors raise ValueError, KeyError, ...
            reason = str(exc).splitlines()[0].split(";")[0] if str(exc) else type(exc).__name__
            hint = "fix the value or remove the tag" if explicit else "quote it to make it a string"
            self.problem(node, path, f"cannot read {shown(value)} as {short_tag(tag)} ({reason}): {hint}")
            return None
