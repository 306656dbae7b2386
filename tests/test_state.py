"""The state dir: damaged files are refused with the file and the fix, never a traceback; a running
daemon never reads them again; writes are atomic and durable."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhd import state as state_mod
from mhd.model import ServiceKey
from mhd.state import DISABLED, OWNED, StateDir, StateFileError

WEB = ServiceKey(socket.AF_INET, 0, 6, ipaddress.ip_address("10.9.0.1"), 80)
V6 = ServiceKey(socket.AF_INET6, 0, 17, ipaddress.ip_address("2001:db8::1"), 53)
MARK = ServiceKey(socket.AF_INET, 7)
GOOD_KEY = {"family": 2, "fwmark": 0, "protocol": 6, "address": "10.9.0.1", "port": 80}

# What an attacker or a careless edit leaves: valid JSON of the wrong shape, and worse.
BAD_OWNED = [
    b'{"family": 2}',
    b"[1, 2]",
    b'[{"family": 2, "fwmark": 0, "protocol": 6, "address": "10.9.0.300", "port": 80}]',
    b'[{"family": 2, "fwmark": 0, "protocol": 6, "address": "2001:db8::1", "port": 80}]',
    b'[{"family": 2, "fwmark": 0, "protocol": 6, "address": null, "port": 80}]',
    b'[{"family": 2, "fwmark": 0, "protocol": 6, "address": "10.9.0.1", "port": 70000}]',
    b'[{"family": 3, "fwmark": 0, "protocol": 6, "address": "10.9.0.1", "port": 80}]',
    b'[{"family": true, "fwmark": 0, "protocol": 6, "address": "10.9.0.1", "port": 80}]',
    b'[{"family": 2, "fwmark": 5, "protocol": 0, "address": "10.9.0.1", "port": 0}]',
    b'[{"family": 2, "fwmark": 0, "protocol": 6, "address": "10.9.0.1"',  # truncated
    b"\xff\xfe\x00binary",
    b"[" * 100_000,
]
BAD_DISABLED = [b'["10.0.0.1:80"]', b'{"web": 5}', b'{"web": [5]}', b'{"web": "10.0.0.1:80"}', b"{", b"\x80"]


def write(path: Path, name: str, raw: bytes) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(raw)


@pytest.mark.parametrize("raw", BAD_OWNED)
def test_a_damaged_owned_file_is_refused_naming_the_file_and_the_fix(tmp_path: Path, raw: bytes) -> None:
    write(tmp_path, OWNED, raw)
    with pytest.raises(StateFileError) as err:
        StateDir(tmp_path).lock()
    assert str(tmp_path / OWNED) in str(err.value) and "adopt: true" in str(err.value)
    with pytest.raises(StateFileError):  # unlocked readers (mhctl plan) say the same
        StateDir(tmp_path).owned()
    # The refusal released the lock: a fixed file can be used at once by the next start.
    (tmp_path / OWNED).write_text(json.dumps([GOOD_KEY]))
    again = StateDir(tmp_path)
    again.lock()
    assert again.owned() == {WEB}


@pytest.mark.parametrize("raw", BAD_DISABLED)
def test_a_damaged_disabled_file_is_refused_naming_the_file_and_the_fix(tmp_path: Path, raw: bytes) -> None:
    write(tmp_path, DISABLED, raw)
    with pytest.raises(StateFileError) as err:
        StateDir(tmp_path).lock()
    assert str(tmp_path / DISABLED) in str(err.value) and "drain" in str(err.value)
    with pytest.raises(StateFileError):
        StateDir(tmp_path).disabled()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Near misses of what mhd writes, so the fuzz reaches the field checks, not only the outer shape.
key_like = st.fixed_dictionaries(
    {},
    optional={
        "family": st.sampled_from([2, 10, 0, -1, "2", True, 2.0]),
        "fwmark": st.sampled_from([0, 7, -1, 2**32, None]),
        "protocol": st.sampled_from([6, 17, 256, "tcp"]),
        "address": st.sampled_from(["10.0.0.1", "2001:db8::1", "", "10.0.0", None, 1, "::"]),
        "port": st.sampled_from([0, 80, 65535, 65536, -1, 80.5]),
    },
)
contents = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(key_like, max_size=3).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=4), st.lists(json_values, max_size=3), max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=64),
    st.lists(key_like, min_size=1, max_size=2).map(lambda v: json.dumps(v).encode()[:-3]),  # truncated
)


@settings(max_examples=300)
@given(owned=contents, disabled=contents)
def test_fuzzed_state_files_start_cleanly_or_are_refused_never_a_traceback(
    owned: bytes, disabled: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write(path, OWNED, owned)
        write(path, DISABLED, disabled)
        state = StateDir(path)
        try:
            state.lock()
        except StateFileError as exc:
            assert str(path) in str(exc)
            return
        try:  # accepted: then it is usable, and what the daemon derives from it is well formed
            for key in state.owned():
                assert str(key) and key.sort_key()
            assert all(isinstance(s, str) for servers in state.disabled().values() for s in servers)
            state.set_owned(state.owned() | {WEB})
            state.set_disabled({"web": {"10.0.0.1:80"}})
        finally:
            state.unlock()


keys = st.builds(
    ServiceKey,
    family=st.just(socket.AF_INET),
    protocol=st.sampled_from([6, 17, 132]),
    address=st.ip_addresses(v=4),
    port=st.integers(0, 65535),
) | st.builds(
    ServiceKey, family=st.sampled_from([socket.AF_INET, socket.AF_INET6]), fwmark=st.integers(1, 2**32 - 1)
)


@given(owned=st.sets(keys, max_size=6))
def test_what_mhd_writes_it_reads_back(owned: set[ServiceKey]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = StateDir(tmp)
        first.lock()
        first.set_owned(owned)
        first.unlock()
        second = StateDir(tmp)
        second.lock()
        assert second.owned() == owned


def test_a_running_daemon_never_rereads_its_files(tmp_path: Path) -> None:
    """Damage behind the back of the process holding the lock changes nothing it sees, and its next
    write replaces the damaged file with its own (before: the next read ended the daemon)."""
    state = StateDir(tmp_path)
    state.lock()
    state.set_owned({WEB, V6, MARK})
    state.set_disabled({"web": {"10.0.0.1:80"}})
    (tmp_path / DISABLED).write_text("[1, 2, 3]")
    (tmp_path / OWNED).write_text('{"oops": 1}')
    assert state.disabled() == {"web": {"10.0.0.1:80"}}
    assert state.owned() == {WEB, V6, MARK}
    state.set_disabled({"web": {"10.0.0.1:80", "10.0.0.2:80"}, "dns": set()})
    assert json.loads((tmp_path / DISABLED).read_text()) == {"web": ["10.0.0.1:80", "10.0.0.2:80"]}


def test_leftover_temporary_files_are_removed_and_renames_are_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, f".{OWNED}.tmp", b"[{half")
    write(tmp_path, f".{DISABLED}.tmp", b"")
    state = StateDir(tmp_path)
    state.lock()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"]
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(state_mod.os, "fsync", fsync)
    state.set_owned({WEB})
    assert synced == [False, True]  # the file's data, then the directory holding the rename


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path)
    state.lock()
    state.set_owned({WEB})
    before = (tmp_path / OWNED).read_bytes()

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_mod.json, "dump", full)
    with pytest.raises(OSError):
        state.set_owned({WEB, V6})
    assert (tmp_path / OWNED).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", OWNED]
