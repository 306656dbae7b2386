"""YAML with positions: every value remembers where it was written.

The config layer validates a tree of `Located` values so that each error can name file:line:column and
the key path, which is what an operator needs to fix a file at 3 a.m. PyYAML's composer already knows
the marks; this module keeps them instead of throwing them away as `safe_load` does.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, 1, "", f"YAML error: {exc}")]) from None


def locate(node: yaml.Node, path: str, file: str) -> Located:
    """A composed node as a `Located` tree whose key paths start at `path`."""
    problems: list[Problem] = []
    tree = _convert(node, path, file, problems)
    if problems:
        raise ConfigError(problems)
    return tree


def _convert(node: yaml.Node, path: str, file: str, problems: list[Problem]) -> Located:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Located] = {}
        for key_node, value_node in node.value:
            key = str(_convert(key_node, path, file, problems).value)
            sub = f"{path}.{key}" if path else key
            if key in out:
                problems.append(
                    Problem(
                        file,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        sub,
                        "duplicate key: remove one of the two",
                    )
                )
            item = _convert(value_node, sub, file, problems)
            item.key_line, item.key_column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            out[key] = item
        return Located(out, line, col, path)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(n, f"{path}[{i}]", file, problems) for i, n in enumerate(node.value)]
        return Located(items, line, col, path)
    tag = _implicit_tag(node.value) if node.tag == _PLAIN else node.tag
    if tag == _STR:  # most values: skip the constructor machinery
        return Located(node.value, line, col, path)
    if tag == _INT and node.value.isdigit() and (node.value[0] != "0" or node.value == "0"):  # not octal
        return Located(int(node.value), line, col, path)
    try:
        typed = yaml.ScalarNode(tag, node.value, node.start_mark, node.end_mark)
        return Located(_CONSTRUCTOR.construct_object(typed), line, col, path)
    except yaml.YAMLError as exc:
        problems.append(Problem(file, line, col, path, f"cannot read this value: {exc}".splitlines()[0]))
        return Located(None, line, col, path)
