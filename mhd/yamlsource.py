"""YAML with positions: every value remembers where it was written.

The config layer validates a tree of `Located` values so that each error can name file:line:column and
the key path, which is what an operator needs to fix a file at 3 a.m. PyYAML's composer already knows
the marks; this module keeps them instead of throwing them away as `safe_load` does.
"""

from __future__ import annotations

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

# libyaml's parser and composer when PyYAML was built with it (Debian's python3-yaml is): a config
# with thousands of servers composes ~10x faster. Both give the same nodes and marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse(text: str, file: str) -> Located:
    """Parse YAML text into a `Located` tree; a syntax error becomes a ConfigError with its position."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError([Problem(file, line, col, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, 1, "", f"YAML error: {exc}")]) from None
    if node is None:
        return Located({}, 1, 1)
    problems: list[Problem] = []
    tree = _convert(node, "", file, problems)
    if problems:
        raise ConfigError(problems)
    return tree


def _convert(node: yaml.Node, path: str, file: str, problems: list[Problem]) -> Located:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Located] = {}
        for key_node, value_node in node.value:
            key = (
                str(key_node.value)
                if key_node.tag == _STR
                else str(_convert(key_node, path, file, problems).value)
            )
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
    if node.tag == _STR:  # most values: skip the constructor machinery
        return Located(node.value, line, col, path)
    if node.tag == _INT and node.value.isdigit() and (node.value[0] != "0" or node.value == "0"):  # not octal
        return Located(int(node.value), line, col, path)
    try:
        return Located(_CONSTRUCTOR.construct_object(node), line, col, path)
    except yaml.YAMLError as exc:
        problems.append(Problem(file, line, col, path, f"cannot read this value: {exc}".splitlines()[0]))
        return Located(None, line, col, path)
