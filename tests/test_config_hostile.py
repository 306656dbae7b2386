"""Configs written to break the loader (issue 11): each gives a ConfigError naming file:line and the
fix, never a traceback, and none may cost unbounded time or memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mhd.config.fields import DURATION_BOUNDS, format_duration
from mhd.config.validate import load, loads
from mhd.config.yamlsource import MAX_BYTES, MAX_NODES, ConfigError

REPO = Path(__file__).resolve().parent.parent
SERVICE = "services: [{name: a, address: 10.0.0.1, port: 80, servers: [10.1.0.1]}]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, "t.yaml")
    return [str(p) for p in info.value.problems]


def mhctl_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mhd.ctl", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


TAGGED = [
    "!!int abc", "!!float abc", "!!int 0x", "!!bool abc", "!!timestamp abc", "!!timestamp 2001-12-14",
    "!foo bar", "!!python/object x", "!!python/object/apply:os.system [true]", "!!binary aGVsbG8=",
    "!!set {a, b}", "!!omap [a: 1]", "!!str [1, 2]", "!!map [1]", "!!int [1]",
]  # fmt: skip


@pytest.mark.parametrize("value", TAGGED)
def test_a_tagged_value_is_a_config_error_at_its_line(value: str) -> None:
    out = problems(f"services: []\nreconcile-interval: {value}\n")
    assert out and all(p.startswith("t.yaml:2:21: reconcile-interval: ") for p in out), out
    assert not any("Located(" in p or "Traceback" in p for p in out)


@pytest.mark.parametrize("value", TAGGED[:5])
def test_mhctl_check_of_a_tagged_value_exits_2_with_file_and_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "mhd.yaml"
    path.write_text(f"services: []\nreconcile-interval: {value}\n")
    run = mhctl_check(path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"{path}:2:21: reconcile-interval: ") and "Traceback" not in run.stderr


def test_plain_values_that_cannot_be_read_say_quote_them() -> None:
    """An invalid date or an integer of 5,000 digits: PyYAML's constructors raise, the operator reads why."""
    out = problems(f"services: [{{name: 2001-13-45}}]\nreconcile-interval: {'9' * 5000}\n")
    assert any(p.startswith("t.yaml:1:19: services[0].name: cannot read '2001-13-45'") for p in out), out
    assert any(p.startswith("t.yaml:2:21: reconcile-interval: cannot read '999") for p in out), out
    assert all("quote it" in p and len(p) < 300 for p in out)


def test_merge_keys_are_refused_at_their_line() -> None:
    out = problems("services:\n  - {<<: {name: a}, address: 10.0.0.1, port: 80}\n")
    assert any(p.startswith("t.yaml:2:") and "merge keys (<<) are not supported" in p for p in out), out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reconcile-interval", ".nan"), ("reconcile-interval", ".inf"), ("reconcile-interval", "-.inf"),
        ("reconcile-interval", "99999999999999999999999h"), ("reconcile-interval", "!!float 1e400"),
        ("reconcile-interval", "0"), ("reconcile-interval", "-1"), ("reconcile-interval", "10ms"),
        ("reconcile-interval", "2h"), ("check.interval", ".nan"), ("check.interval", ".inf"),
        ("check.interval", "5ms"), ("check.interval", "!!float 1e400"), ("check.timeout", ".nan"),
        ("check.timeout", "0"), ("check.timeout", "-.inf"),
    ],
)  # fmt: skip
def test_durations_are_finite_and_bounded(key: str, value: str) -> None:
    if key == "reconcile-interval":
        text = f"reconcile-interval: {value}\n{SERVICE}"
    else:
        other = "timeout: 1s" if key == "check.interval" else "interval: 2s"
        text = f"defaults: {{check: {{type: tcp, {other}, {key.split('.')[1]}: {value}}}}}\n{SERVICE}"
    out = problems(text)
    lo, hi = DURATION_BOUNDS[key]
    bounds = f"{key} must be from {format_duration(lo)} to {format_duration(hi)}, not "
    assert any(re.match(rf"t\.yaml:1:\d+: [a-z.-]*{key.split('.')[-1]}: {bounds}", p) for p in out), out


def test_the_duration_bounds_are_named_in_the_message_and_in_the_example_config() -> None:
    out = problems(f"reconcile-interval: .nan\n{SERVICE}")
    assert out == ["t.yaml:1:21: reconcile-interval: reconcile-interval must be from 100ms to 1h, not nan"]
    example = (REPO / "etc" / "mhd.yaml").read_text()
    assert "100ms to 1h" in example and "10ms to 1h" in example
    assert f"{MAX_BYTES >> 20} MiB" in example and f"{MAX_NODES:,}" in example


def test_durations_at_the_bounds_are_accepted() -> None:
    config = loads(
        f"reconcile-interval: 100ms\ndefaults: {{check: {{interval: 1h, timeout: 1ms}}}}\n{SERVICE}"
    )
    assert config.reconcile_interval == 0.1
    assert (config.services[0].check.interval, config.services[0].check.timeout) == (3600.0, 0.001)


def test_billion_laughs_stops_at_the_node_bound_with_a_line() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    out = problems("\n".join(lines) + "\nservices: []\n")
    assert len([p for p in out if "expands to more than" in p]) == 1, out
    assert any(re.match(r"t\.yaml:\d+:\d+: a\d", p) and f"{MAX_NODES:,} values" in p for p in out), out


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    out = problems("a: &a [*a]\nservices: []\n")
    assert any(p.startswith("t.yaml:1:") and "nested more than" in p for p in out), out


def test_aliases_that_stay_small_still_work() -> None:
    config = loads(
        textwrap.dedent(
            """
            services:
              - name: a
                address: 10.0.0.1
                port: 80
                check: &hc {type: tcp, interval: 3s}
                servers: [10.1.0.1]
              - {name: b, address: 10.0.0.2, port: 80, check: *hc, servers: [10.1.0.2]}
            """
        )
    )
    assert [s.check.interval for s in config.services] == [3.0, 3.0]


def test_a_file_over_the_size_bound_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: nothing to read, only a size
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}:0:0: the file is {MAX_BYTES + 1:,} bytes, more than the limit of {MAX_BYTES:,} (4 MiB): split it"
    )


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_mhctl_check_of_a_device_a_fifo_or_a_directory_does_not_read_forever(
    tmp_path: Path, special: str
) -> None:
    path = Path(special) if special.startswith("/") else tmp_path / special
    if special == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would wait forever
    elif special == "dir":
        path.mkdir()
    run = mhctl_check(path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"{path}:0:0: cannot read: ") and "Traceback" not in run.stderr


def test_nul_and_control_characters_are_reported_at_their_line() -> None:
    out = problems("services: []\n\n\nstate-dir: /var/\x00lib\n")
    assert out == [
        "t.yaml:4:17: character U+0000 is not allowed in YAML (control characters are not allowed): remove it"
    ]
    out = problems(
        "# café\nservices: []\nstate-dir: é\x07\n"
    )  # libyaml counts bytes: the line is right anyway
    assert out[0].startswith("t.yaml:3:13: character U+0007")


def test_port_0_in_the_short_form_is_refused_like_in_the_mapping_form() -> None:
    out = problems('services: [{name: a, address: 10.0.0.1, port: 80, servers: ["10.1.0.1:0"]}]\n')
    assert out == [
        "t.yaml:1:61: services[0].servers[0]: server '10.1.0.1:0': port 0 is only for fwmark services; give 1..65535"
    ]
    mapping = problems(
        "services: [{name: a, address: 10.0.0.1, port: 80, servers: [{address: 10.1.0.1, port: 0}]}]"
    )
    assert "out of range 1..65535" in mapping[0]
    fwmark = loads('services: [{name: m, fwmark: 3, servers: ["10.1.0.1:0", "10.1.0.2"]}]')
    assert [s.port for s in fwmark.services[0].servers] == [0, 0]


@pytest.mark.parametrize("value", ["[a, b]", "true", "12", "{a: 1}", "0"])
def test_api_socket_must_be_a_path(value: str) -> None:
    out = problems(f"api: {{socket: {value}}}\nservices: []\n")
    assert len(out) == 1 and out[0].startswith("t.yaml:1:15: api.socket: api.socket must be a path"), out
    assert "Located(" not in out[0]


def test_api_socket_and_listen_can_still_be_disabled() -> None:
    for off in ("", "''", "false", "null"):
        api = loads(f"api: {{socket: {off}, listen: {off}}}\nservices: []\n").api
        assert (api.socket, api.listen) == (None, None)


NESTED = ["[1, [2]]", "{a: [1]}", "[{a: 1}]", "{a: {b: c}}"]
FIELDS = [
    "services: [{name: %s, address: 10.0.0.1, port: 80}]",
    "services: [{name: a, address: %s, port: 80}]",
    "services: [{name: a, address: 10.0.0.1, port: %s}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, scheduler: %s}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, min-healthy: %s}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, servers: [%s]}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, protocol: %s}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, check: {expect-status: %s}}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, check: {path: %s}}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, check: {interval: %s}}]",
    "services: [{name: a, address: 10.0.0.1, port: 80, check: {command: %s}}]",
    "services: []\napi: {listen: %s}",
    "services: []\napi: {socket-mode: %s}",
    "services: []\n%s: 1",
    "services: []\nreconcile-interval: %s",
]


@pytest.mark.parametrize("template", FIELDS)
def test_no_message_shows_an_internal_repr(template: str) -> None:
    for value in NESTED:
        for p in problems(template % value):
            assert "Located" not in p and "line=" not in p, p


def test_an_unquoted_date_is_shown_as_written() -> None:
    out = problems(
        "services: [{name: 2001-12-14, address: 2001-12-14 10:00:00, port: 80}]\nstate-dir: 2001-12-14"
    )
    assert "t.yaml:1:19: services[0].name: name '2001-12-14' must match" in out[0]
    assert "address '2001-12-14 10:00:00' is not an IPv4 or IPv6 address" in out[1]
    assert (
        out[2]
        == "t.yaml:2:12: state-dir: state-dir must be a string, not a date (quote it to make it a string) ('2001-12-14')"
    )
    assert not any("datetime" in p for p in out)


def test_a_huge_key_or_value_makes_a_short_message() -> None:
    out = problems("services: []\n? " + "k" * 100_000 + "\n: 1\nstate-dir: [" + "x" * 100_000 + "]\n")
    assert len(out) == 2 and all(len(p) < 400 for p in out), [len(p) for p in out]
