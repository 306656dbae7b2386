"""Migration to mhd: converters from other load balancers' configurations to a commented mhd.yaml.

Each importer is a pure function from text (and, for keepalived, the files it includes) to an
`Imported`: the YAML text and the list of `Note`s, one per thing that has no mhd equivalent or was
changed on the way, each with the file:line it came from. Nothing is silently dropped: an operator
migrating a production director must see every difference before switching. The notes are also
written into the YAML as comments, so the file carries its own review list.

`mhctl import keepalived FILE` and `mhctl import ipvsadm [FILE]` are thin shells over
`keepalived.convert_file` and `ipvsadm.convert_text`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

NUL = b"\0"
MAX_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class Note:
    """Something the operator must review: where it came from and what happened to it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Imported:
    """The result of an import: mhd.yaml text (valid for `mhctl check`) and the review notes."""

    yaml: str
    notes: tuple[Note, ...]
    services: int


class ImportFailed(Exception):
    """The input cannot be read or converted at all (not a text file, too large, unreadable)."""


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """A configuration file's text; ImportFailed (the reason, without the path) if it is not a
    regular, UTF-8 text file of at most `limit` bytes: a converter never sees binary or endless input."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImportFailed("not a regular file")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ImportFailed(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ImportFailed(f"too large (more than {limit} bytes)")
    if NUL in data:
        raise ImportFailed(f"not a text file (NUL byte at offset {data.index(NUL)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
