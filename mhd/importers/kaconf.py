"""keepalived.conf as a tree of located statements, the way keepalived 2.2 reads it.

What keepalived's reader does and this one mirrors: `#` and `!` comments anywhere outside quotes;
`{` and `}` as tokens of their own (a block may open on the next line); `include` and its variants
(`includer`, `includem`, `includew`, `includeb`, `includea`, `includet`) with globs relative to the
including file's directory, before any other processing; `@id` / `@^id` conditional lines against
a config-id; `$NAME=value` parameters and `$NAME` / `${NAME}` substitution. Multi-line parameter
definitions and `~SEQ` / `~LST` generators are not expanded: each gives a note and is left out.

Hostile input never raises past `read`: an unreadable, binary or oversized main file is an
`ImportFailed` with a one-line reason; the same in an included file, an include loop, too deep an
include chain, unbalanced braces, are notes with file:line, and reading goes on.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from mhd.importers import MAX_FILE_BYTES, ImportFailed, Note, read_text

MAX_TOTAL_BYTES = 64 << 20
MAX_INCLUDE_DEPTH = 16
MAX_FILES = 1000
MAX_LINE = 1 << 20
MAX_SUBSTITUTIONS = 64  # per line: a parameter that refers to itself stops here
INCLUDE_WORDS = ("include", "includer", "includem", "includew", "includeb", "includea", "includet")
PARAM_DEF = re.compile(r"^\s*\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
PARAM_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)(?=\s|$)")


@dataclass
class Node:
    """One statement: `keyword args...`, and for a block its children."""

    keyword: str
    args: list[str]
    file: str
    line: int
    children: list[Node] | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def text(self) -> str:
        return " ".join([self.keyword, *self.args])


@dataclass
class Token:
    text: str
    file: str
    line: int
    first: bool  # first token of its line: a new statement starts here
    quoted: bool = False


@dataclass
class _Reader:
    config_id: str | None
    notes: list[Note] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    total: int = 0
    files: int = 0

    def note(self, file: str, line: int, message: str) -> None:
        self.notes.append(Note(file, line, message))

    # files --------------------------------------------------------------------------------------
    def load(self, path: str, at: tuple[str, int] | None) -> str | None:
        """The text of one file, or None (with a note) for an included one that cannot be used."""
        try:
            text = read_text(path, min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - self.total))
        except ImportFailed as exc:
            if at is None:
                raise ImportFailed(f"{path}: {exc}") from None
            self.note(at[0], at[1], f"include {path}: {exc}; left out")
            return None
        self.total += len(text)
        self.files += 1
        return text

    def tokens(self, path: str, stack: tuple[str, ...], at: tuple[str, int] | None) -> Iterator[Token]:
        text = self.load(path, at)
        if text is None:
            return
        real = os.path.realpath(path)
        stack = (*stack, real)
        lines = iter(enumerate(text.splitlines(), 1))
        for number, raw in lines:
            words = split(raw, path, number, True)
            if not words:
                continue
            if words[0].text in INCLUDE_WORDS and not words[0].quoted:
                yield from self.include(words, path, number, stack)
                continue
            line = self.conditional(raw, path, number)
            if line is None:
                continue
            if (m := PARAM_DEF.match(line)) is not None:
                value = m.group(2).strip()
                if value.endswith("\\"):
                    self.note(path, number, f"multi-line parameter ${m.group(1)} is not expanded: left out")
                    for _, more in lines:  # skip its continuation lines
                        if not more.rstrip().endswith("\\"):
                            break
                    continue
                self.params[m.group(1)] = value
                continue
            if line.lstrip().startswith("~"):
                self.note(
                    path, number, "~SEQ/~LST generators are not expanded: line left out; expand it by hand"
                )
                continue
            line = self.substitute(line, path, number)
            yield from split(line, path, number, True)

    def include(self, words: list[Token], path: str, number: int, stack: tuple[str, ...]) -> Iterator[Token]:
        if len(words) < 2:
            self.note(path, number, f"{words[0].text} without a file name: left out")
            return
        pattern = words[1].text
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(path) or ".", pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            self.note(path, number, f"{words[0].text} {words[1].text}: no file matches; nothing included")
        for match in matches:
            if os.path.realpath(match) in stack:
                self.note(path, number, f"include loop: {match} is already being read; not included again")
            elif len(stack) >= MAX_INCLUDE_DEPTH:
                self.note(
                    path,
                    number,
                    f"include {match}: includes nested deeper than {MAX_INCLUDE_DEPTH}; left out",
                )
            elif self.files >= MAX_FILES:
                self.note(path, number, f"include {match}: more than {MAX_FILES} files; left out")
            else:
                yield from self.tokens(match, stack, (path, number))

    def conditional(self, raw: str, path: str, number: int) -> str | None:
        """The line without its `@id` prefix when it applies to this config-id, else None."""
        stripped = raw.lstrip()
        if not stripped.startswith("@"):
            return raw
        m = re.match(r"@(\^?)(\S*)\s*(.*)", stripped)
        assert m is not None
        negate, ident, rest = m.group(1) == "^", m.group(2), m.group(3)
        applies = (ident == self.config_id) != negate
        if not applies:
            who = f"config-id {self.config_id}" if self.config_id else "no config-id"
            self.note(
                path, number, f"conditional line for @{m.group(1)}{ident} left out ({who}; keepalived -i)"
            )
            return None
        return rest

    def substitute(self, line: str, path: str, number: int) -> str:
        for _ in range(MAX_SUBSTITUTIONS):
            new = PARAM_USE.sub(lambda m: self.params.get(m.group(1) or m.group(2), m.group(0)), line)
            if new == line:
                return line
            line = new
            if len(line) > MAX_LINE:
                self.note(
                    path,
                    number,
                    f"parameter substitution makes a line longer than {MAX_LINE} characters: line left out",
                )
                return ""
        self.note(path, number, "parameter substitution does not end (a parameter refers to itself)")
        return line


def split(line: str, file: str, number: int, first: bool) -> list[Token]:
    """keepalived's tokens: whitespace-separated, `"quoted strings"`, braces alone, comments cut."""
    out: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c in "#!":
            break
        elif c in "{}":
            out.append(Token(c, file, number, first and not out))
            i += 1
        elif c == '"':
            end = line.find('"', i + 1)
            end = n if end < 0 else end
            out.append(Token(line[i + 1 : end], file, number, first and not out, quoted=True))
            i = end + 1
        else:
            j = i
            while j < n and not line[j].isspace() and line[j] not in '{}"':
                j += 1
            out.append(Token(line[i:j], file, number, first and not out))
            i = j
    return out


def tree(tokens: Iterator[Token], notes: list[Note]) -> list[Node]:
    """Statements and blocks from tokens; unbalanced braces become notes, never an exception."""
    root: list[Node] = []
    stack: list[tuple[Node, list[Node]]] = []
    body = root
    pending: Node | None = None
    for tok in tokens:
        if tok.text == "{" and not tok.quoted:
            head = pending or Node("", [], tok.file, tok.line)
            if pending is None:
                notes.append(Note(tok.file, tok.line, "'{' without a keyword before it: block left out"))
            head.children = []
            body.append(head)
            stack.append((head, body))
            body, pending = head.children, None
        elif tok.text == "}" and not tok.quoted:
            if pending is not None:
                body.append(pending)
                pending = None
            if not stack:
                notes.append(Note(tok.file, tok.line, "'}' without a block to close: ignored"))
                continue
            _, body = stack.pop()
        elif pending is None or tok.first:
            if pending is not None:
                body.append(pending)
            pending = Node(tok.text, [], tok.file, tok.line)
        else:
            pending.args.append(tok.text)
    if pending is not None:
        body.append(pending)
    for head, _ in reversed(stack):
        notes.append(
            Note(
                head.file,
                head.line,
                f"block '{head.text()}' is not closed with '}}' before the end of input: read up to the end",
            )
        )
    return root


def read(path: str, config_id: str | None = None) -> tuple[list[Node], list[Note]]:
    """The statements of a keepalived configuration and its included files, and the reader's notes."""
    reader = _Reader(config_id)
    nodes = tree(reader.tokens(path, (), None), reader.notes)
    return nodes, reader.notes
