"""Records the daemon publishes to the readers of its state (the API, the status documents, metrics).

Core values, so that a reader depends on them and not on the daemon that makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReloadResult:
    """The outcome of one config reload: served by `POST /v1/reload` and in the status document."""

    ok: bool
    at: float
    errors: list[str] = field(default_factory=list)
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": self.at, "errors": self.errors, "sha256": self.sha256}
