"""Config validation: every error with its position, all at once, and the records it builds."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhd.config.validate import load, loads
from mhd.config.yamlsource import ConfigError
from mhd.model import MH_FALLBACK, MH_PORT

REPO = Path(__file__).resolve().parent.parent


def errors(text: str, **kw: int) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), "t.yaml", **kw)
    return [str(p) for p in info.value.problems]


def test_bundled_example_is_valid() -> None:
    config = load(REPO / "etc" / "mhd.yaml")
    assert [s.name for s in config.services] == ["web", "dns", "web6"]
    web = config.services[0]
    assert [str(s.key) for s in web.servers] == ["10.234.79.11:80", "10.234.79.13:8080", "10.234.79.14:80"]
    assert web.servers[1].weight == 2
    assert web.check.type == "http" and web.check.path == "/healthz" and web.check.rise == 2
    assert web.flags == MH_PORT
    assert config.reconcile_interval == 10.0


def test_the_examples_commented_out_in_the_default_check_are_valid_as_written() -> None:
    """An operator uncomments a suggestion and reloads: it must be accepted next to the defaults
    around it (`fast-interval: 500ms` beside `timeout: 1s` was not)."""
    lines, inside, uncommented = [], False, 0
    for line in (REPO / "etc" / "mhd.yaml").read_text().splitlines():
        if line == "  check:":
            inside = True
        elif inside and line[:3].strip() and not line.startswith("    "):
            inside = False
        match = re.match(r"^(    )# ([a-z-]+: .*)$", line) if inside else None
        if match:
            line, uncommented = match[1] + match[2], uncommented + 1
        lines.append(line)
    assert uncommented >= 4
    config = loads("\n".join(lines) + "\n", "mhd.yaml")
    checks = [s.check for svc in config.services for s in svc.servers]
    assert any(c.fast_interval is not None and c.down_interval is not None for c in checks)


def test_unknown_key_suggests_the_right_one() -> None:
    out = errors(
        """
        services:
          - name: web
            adress: 10.0.0.1
            port: 80
        """
    )
    assert "t.yaml:4:5: services[0].adress: unknown key 'adress' in a service; did you mean 'address'?" in out


def test_all_errors_in_one_run_with_positions() -> None:
    out = errors(
        """
        reconcile-interval: soon
        services:
          - name: Web
            address: 10.0.0.1
            port: 70000
            servers:
              - address: 10.0.1.1
                weight: 0
              - address: 10.0.1.2
                weight: 70000
        """
    )
    assert any(e.startswith("t.yaml:2:21: reconcile-interval: ") and "duration" in e for e in out)
    assert any(e.startswith("t.yaml:4:11: services[0].name:") for e in out)
    assert any(e.startswith("t.yaml:6:11: services[0].port: port 70000 is out of range") for e in out)
    assert any(
        e.startswith("t.yaml:9:17: services[0].servers[0].weight: weight 0 is not allowed") for e in out
    )
    assert any("backport" in e and "disable" in e for e in out)
    assert any(e.startswith("t.yaml:11:17: services[0].servers[1].weight: weight 70000") for e in out)


def test_duplicates_are_rejected() -> None:
    out = errors(
        """
        services:
          - {name: a, address: 10.0.0.1, port: 80, servers: ["10.0.1.1", "10.0.1.1:80"]}
          - {name: a, address: 10.0.0.2, port: 80}
          - {name: b, address: 10.0.0.1, port: 80}
        """
    )
    assert any("listed twice" in e and e.startswith("t.yaml:3:") for e in out)
    assert any("name 'a' is used twice" in e for e in out)
    assert any("declared twice" in e for e in out)


def test_mh_flags_only_with_mh() -> None:
    out = errors("services: [{name: a, address: 10.0.0.1, port: 80, scheduler: wrr, mh-fallback: true}]")
    assert any("mh-fallback only applies to scheduler mh" in e for e in out)
    # Inherited from defaults it simply does not apply.
    config = loads(
        "defaults: {mh-port: true}\nservices: [{name: a, address: 10.0.0.1, port: 80, scheduler: wrr}]"
    )
    assert config.services[0].flags == 0
    config = loads("services: [{name: a, address: 10.0.0.1, port: 80, mh-fallback: true}]")
    assert config.services[0].flags == MH_FALLBACK


def test_scheduler_none_is_refused_with_its_place() -> None:
    """The kernel accepts "none" (mhd stages new services with it); as a config value it would
    silently serve nobody."""
    out = errors("services:\n  - {name: a, address: 10.0.0.1, port: 80, scheduler: none}")
    assert any(e.startswith("t.yaml:2:") and "scheduler none schedules no client" in e for e in out), out


def test_more_servers_than_slots() -> None:
    servers = ", ".join(f'"10.0.{i // 250}.{i % 250 + 1}"' for i in range(252))
    out = errors(f"services: [{{name: a, address: 10.0.0.1, port: 80, servers: [{servers}]}}]", mh_slots=251)
    assert any("252 servers but the kernel's MH table has 251 slots" in e for e in out)


def test_check_inheritance_and_validation() -> None:
    config = loads(
        textwrap.dedent(
            """
            defaults: {check: {type: tcp, interval: 5s, fall: 4}}
            services:
              - name: a
                address: 10.0.0.1
                port: 80
                check: {type: http, path: /hc, expect-status: [200, 300-302]}
                servers:
                  - {address: 10.0.1.1, check: {port: 8080, timeout: 500ms}}
                  - 10.0.1.2
            """
        )
    )
    svc = config.services[0]
    assert svc.check.type == "http" and svc.check.interval == 5.0 and svc.check.fall == 4
    assert svc.check.expect_status == ((200, 200), (300, 302))
    assert svc.servers[0].check.port == 8080 and svc.servers[0].check.timeout == 0.5
    assert svc.servers[1].check == svc.check
    out = errors("services: [{name: a, address: 10.0.0.1, port: 80, check: {type: exec}}]")
    assert any("exec check needs command" in e for e in out)
    out = errors("services: [{name: a, address: 10.0.0.1, port: 80, check: {type: htp}}]")
    assert any("did you mean 'http'" in e for e in out)


def test_ipv6_and_fwmark_services() -> None:
    config = loads(
        textwrap.dedent(
            """
            services:
              - {name: v6, address: "2001:db8::1", port: 443, servers: ["[2001:db8::11]:8443", "2001:db8::12"]}
              - {name: m, fwmark: 7, family: ipv6, servers: [{address: "2001:db8::21", port: 0}]}
            """
        )
    )
    v6, m = config.services
    assert [str(s.key) for s in v6.servers] == ["[2001:db8::11]:8443", "[2001:db8::12]:443"]
    assert str(m.key) == "fwmark:7/ipv6"
    out = errors('services: [{name: x, address: "2001:db8::1", port: 80, servers: ["10.0.0.1"]}]')
    assert any("only forward: tunnel mixes families" in e for e in out)


def test_yaml_syntax_error_has_a_position() -> None:
    out = errors("services:\n  - name: [unclosed\n")
    assert len(out) == 1 and out[0].startswith("t.yaml:3:") and "YAML syntax error" in out[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    """No input makes validation crash: an operator always gets a message, never a traceback."""
    try:
        loads(text)
    except ConfigError as exc:
        assert exc.problems


def test_socket_mode_must_be_quoted_octal() -> None:
    assert loads('api: {socket-mode: "0640"}\nservices: []').api.socket_mode == 0o640
    out = errors("api: {socket-mode: 0660}\nservices: []")
    assert any("quoted octal mode" in e for e in out)
