"""The state dir: what mhd must remember across restarts, and nothing it can read from the kernel.

- `owned.json`: the virtual services mhd manages, so that one removed from the config is deleted
  from IPVS and every other service in the kernel (kube-proxy's, hand-made ones) is never touched.
- `disabled.json`: servers an operator drained through the API; kept across reloads and restarts.
- `lock`: an flock so that two daemons never manage the same state dir.

Writes are atomic (temporary file, fsync, rename, fsync of the directory): a crash leaves the old or
the new file, never half, and a leftover temporary file is removed when the dir is next locked.

A file mhd did not write (wrong JSON shape, invalid address, truncated, binary) is never guessed
around: guessing would either forget services mhd owns (they would stay in IPVS forever, or be
refused as foreign) or put drained servers back in service. `lock()` reads both files and raises
`StateFileError` naming the file, what is wrong and the fix, so the daemon refuses to start (exit 2).
While the lock is held the process keeps both in memory and only writes the files: nobody else may
write them then, and a file damaged behind its back cannot stop a running daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mhd.model import ServiceKey

OWNED, DISABLED = "owned.json", "disabled.json"
MAX_FILE_BYTES = 16 << 20  # 1,000 services take ~100 KB; anything far larger is not mhd's writing
EMPTY = {OWNED: b"[]", DISABLED: b"{}"}  # what a missing file means
T = TypeVar("T")


class StateError(Exception):
    """The state dir cannot be used now (another mhd holds it, no permission): a runtime failure."""


class StateFileError(StateError):
    """A state file holds what mhd never writes: invalid input (exit 2) until an operator fixes it."""


# What to do about a damaged file, and why mhd does not simply start without it.
FIXES = {
    OWNED: "mhd does not start rather than forget which services are its own: restore the file (a JSON "
    "list of services as mhd writes them), or remove it, after which mhd owns only the services it "
    "creates and leaves every configured service already in IPVS alone unless it says adopt: true",
    DISABLED: "mhd does not start rather than put drained servers back in service: fix the file (a JSON "
    'object: service name -> list of "addr:port") or remove it to forget every drain',
}


def key_to_json(key: ServiceKey) -> dict[str, Any]:
    return {
        "family": int(key.family),
        "fwmark": key.fwmark,
        "protocol": key.protocol,
        "address": str(key.address) if key.address is not None else None,
        "port": key.port,
    }


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _integer(data: dict[str, Any], name: str, top: int) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise ValueError(f"{name} must be an integer from 0 to {top}, not {json.dumps(value)}")
    return value


def key_from_json(data: object) -> ServiceKey:
    """One entry of owned.json, checked field by field (ValueError says which field is wrong)."""
    if not isinstance(data, dict):
        raise ValueError(f"a service must be an object, not {_kind(data)}")
    family = _integer(data, "family", 0xFFFF)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be {socket.AF_INET} (IPv4) or {socket.AF_INET6} (IPv6), not {family}")
    fwmark = _integer(data, "fwmark", 0xFFFFFFFF)
    protocol, port = _integer(data, "protocol", 0xFF), _integer(data, "port", 0xFFFF)
    address = data.get("address")
    if fwmark:
        if address is not None:
            raise ValueError("a fwmark service has no address (null)")
        return ServiceKey(family, fwmark, protocol, None, port)
    if not isinstance(address, str):
        raise ValueError(f"address must be an IP address, not {_kind(address)}")
    ip = ipaddress.ip_address(address)  # ValueError names the text
    if (ip.version == 6) != (family == socket.AF_INET6):
        raise ValueError(f"address {address} does not match family {family}")
    return ServiceKey(family, 0, protocol, ip, port)


def owned_from_json(data: object) -> frozenset[ServiceKey]:
    if not isinstance(data, list):
        raise ValueError(f"expected a list of services, found {_kind(data)}")
    keys = set()
    for i, item in enumerate(data):
        try:
            keys.add(key_from_json(item))
        except ValueError as exc:
            raise ValueError(f"entry {i + 1}: {exc}") from None
    return frozenset(keys)


def disabled_from_json(data: object) -> dict[str, frozenset[str]]:
    if not isinstance(data, dict):
        raise ValueError(f"expected an object (service name -> servers), found {_kind(data)}")
    out = {}
    for name, servers in data.items():
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ValueError(f'service {json.dumps(name)}: expected a list of "addr:port" strings')
        out[name] = frozenset(servers)
    return out


class StateDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._owned: frozenset[ServiceKey] = frozenset()
        self._disabled: dict[str, frozenset[str]] = {}

    def lock(self) -> None:
        """Take the state dir for this process, or fail naming the other one; then read both files
        (StateFileError if either is damaged: see the module docstring)."""
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
        try:
            for name in (OWNED, DISABLED):  # left by a crash between create and rename
                with contextlib.suppress(FileNotFoundError):
                    (self.path / f".{name}.tmp").unlink()
            owned = self._read(OWNED, owned_from_json)
            disabled = self._read(DISABLED, disabled_from_json)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd, self._owned, self._disabled = fd, owned, disabled

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read(self, name: str, parse: Callable[[object], T]) -> T:
        return self.read_file(name, parse, EMPTY[name], FIXES[name])

    def read_file(self, name: str, parse: Callable[[object], T], empty: bytes, fix: str) -> T:
        """Read and `parse` the JSON file `name` (`empty` when it does not exist). A file that
        does not parse is a StateFileError naming the file and `fix`: mhd never guesses its state."""
        path = self.path / name
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raw = empty
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MiB")
            return parse(json.loads(raw.decode()))
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and shape errors; absurd nesting
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise StateFileError(f"{path} is not a valid mhd state file ({what}): {fix}") from None

    def _write(self, name: str, data: Any) -> None:
        self.write_file(name, data)

    def write_file(self, name: str, data: Any) -> None:
        """Write `data` as JSON to `name` atomically (temporary file, fsync, rename, fsync the dir)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path / f".{name}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        # The rename is durable only once the directory is: without this a power loss can bring
        # back the old file after mhd acted on the new one.
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def owned(self) -> set[ServiceKey]:
        """From memory while we hold the lock (also: a pass touching one service of 1,000 need not
        decode 1,000 keys), from the file otherwise (`mhctl plan`)."""
        if self._lock_fd is not None:
            return set(self._owned)
        return set(self._read(OWNED, owned_from_json))

    def set_owned(self, keys: set[ServiceKey]) -> None:
        if keys != self.owned():
            self._write(OWNED, sorted((key_to_json(k) for k in keys), key=json.dumps))
            self._owned = frozenset(keys)

    def disabled(self) -> dict[str, set[str]]:
        """service name -> servers (as `addr:port`) an operator disabled."""
        if self._lock_fd is not None:
            return {name: set(servers) for name, servers in self._disabled.items()}
        return {name: set(servers) for name, servers in self._read(DISABLED, disabled_from_json).items()}

    def set_disabled(self, disabled: dict[str, set[str]]) -> None:
        self._write(DISABLED, {k: sorted(v) for k, v in sorted(disabled.items()) if v})
        self._disabled = {k: frozenset(v) for k, v in disabled.items() if v}
