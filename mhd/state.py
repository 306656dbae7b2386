"""The state dir: what mhd must remember across restarts, and nothing it can read from the kernel.

- `owned.json`: the virtual services mhd manages, so that one removed from the config is deleted
  from IPVS and every other service in the kernel (kube-proxy's, hand-made ones) is never touched.
- `disabled.json`: servers an operator drained through the API; kept across reloads and restarts.
- `lock`: an flock so that two daemons never manage the same state dir.

Writes are atomic (temporary file, fsync, rename): a crash leaves the old or the new file, never half.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from mhd.model import ServiceKey


class StateError(Exception):
    pass


def key_to_json(key: ServiceKey) -> dict[str, Any]:
    return {
        "family": int(key.family),
        "fwmark": key.fwmark,
        "protocol": key.protocol,
        "address": str(key.address) if key.address is not None else None,
        "port": key.port,
    }


def key_from_json(data: dict[str, Any]) -> ServiceKey:
    address = ipaddress.ip_address(data["address"]) if data.get("address") else None
    return ServiceKey(
        int(data["family"]), int(data["fwmark"]), int(data["protocol"]), address, int(data["port"])
    )


class StateDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._owned: frozenset[ServiceKey] | None = None

    def lock(self) -> None:
        """Take the state dir for this process, or fail naming the other one."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StateError(f"cannot use state dir {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StateError(
                f"state dir {self.path} is in use by another mhd (pid {other or '?'}): "
                "stop it, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            self._owned = None

    def _read(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.path / name}: {exc}; fix or remove the file") from None

    def _write(self, name: str, data: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def owned(self) -> set[ServiceKey]:
        """Read from the file, or from memory while we hold the lock: then nobody else writes the
        file, and a pass touching one service of 1,000 need not decode 1,000 keys three times."""
        if self._owned is not None and self._lock_fd is not None:
            return set(self._owned)
        owned = {key_from_json(item) for item in self._read("owned.json", [])}
        if self._lock_fd is not None:
            self._owned = frozenset(owned)
        return owned

    def set_owned(self, keys: set[ServiceKey]) -> None:
        if keys != self.owned():
            self._write("owned.json", sorted((key_to_json(k) for k in keys), key=json.dumps))
            self._owned = frozenset(keys) if self._lock_fd is not None else None

    def disabled(self) -> dict[str, set[str]]:
        """service name -> servers (as `addr:port`) an operator disabled."""
        return {name: set(servers) for name, servers in self._read("disabled.json", {}).items()}

    def set_disabled(self, disabled: dict[str, set[str]]) -> None:
        self._write("disabled.json", {k: sorted(v) for k, v in sorted(disabled.items()) if v})
