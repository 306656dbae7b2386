"""mhctl import keepalived: keepalived.conf -> mhd.yaml that passes validation, with a note for the rest."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhd.config.records import Config, ServiceConfig
from mhd.config.validate import loads
from mhd.importers import Imported, ImportFailed
from mhd.importers.keepalived import convert_file
from mhd.model import FORWARD_METHODS, MH_FALLBACK, MH_PORT

SAMPLES = sorted(glob.glob("/usr/share/doc/keepalived/samples/keepalived.conf.*"))


def imported(tmp_path: Path, text: str, name: str = "keepalived.conf", **kw: str) -> tuple[Imported, Config]:
    path = tmp_path / name
    path.write_text(text)
    result = convert_file(str(path), **kw)
    return result, loads(result.yaml, "imported.yaml")


def notes(result: Imported) -> list[str]:
    return [str(n) for n in result.notes]


def one(config: Config) -> ServiceConfig:
    assert len(config.services) == 1, config.services
    return config.services[0]


@pytest.mark.skipif(not SAMPLES, reason="keepalived is not installed (apt-get install keepalived)")
@pytest.mark.parametrize("sample", SAMPLES, ids=os.path.basename)
def test_every_debian_sample_converts_and_validates(sample: str) -> None:
    result = convert_file(sample)
    config = loads(result.yaml, sample + ".yaml")
    assert len(config.services) == result.services
    text = Path(sample).read_text()
    if "virtual_server" in text.replace("virtual_server_group", ""):
        assert config.services, "a sample with virtual servers imports at least one"
    for note in result.notes:  # every note points at a real line of the sample
        assert note.file == sample and 1 <= note.line <= len(text.splitlines())
    for line in result.yaml.splitlines()[: 5 + len(result.notes)]:
        assert line.startswith("#") or not line  # notes are comments at the top


def test_the_virtual_server_group_sample_expands_ranges_and_fwmarks() -> None:
    sample = "/usr/share/doc/keepalived/samples/keepalived.conf.virtual_server_group"
    if not Path(sample).exists():
        pytest.skip("keepalived is not installed")
    config = loads(convert_file(sample).yaml)
    # 10.0.0.1:8080, 10.0.0.2:80, 192.168.200.1:1358, 192.168.200.3-10:80 (8), fwmark 1 and 2
    assert len(config.services) == 13
    assert {s.key.fwmark for s in config.services if s.key.fwmark} == {1, 2}
    assert all(len(s.servers) == 2 for s in config.services)


MH = """
virtual_server 10.0.0.1 80 {
    lvs_sched mh
    mh-port
    mh-fallback
    lvs_method DR
    protocol TCP
    real_server 10.1.0.2 8080 {
        weight 3
    }
    real_server 10.1.0.1 8080
    {
    }
}
"""


def test_mh_service_with_flags_forwarding_weights_and_ports(tmp_path: Path) -> None:
    result, config = imported(tmp_path, MH)
    svc = one(config)
    assert (svc.scheduler, svc.flags) == ("mh", MH_PORT | MH_FALLBACK)
    assert str(svc.key) == "tcp:10.0.0.1:80"
    assert [(str(s.address), s.port, s.weight, s.forward) for s in svc.servers] == [
        ("10.1.0.2", 8080, 3, FORWARD_METHODS["dr"]),
        ("10.1.0.1", 8080, 1, FORWARD_METHODS["dr"]),
    ]
    assert svc.check.type == "none"
    # keepalived put 10.1.0.1 at the head (added last): canonical order, nothing to say
    assert not [n for n in notes(result) if "canonical" in n]


def test_flags_before_the_scheduler_are_ignored_as_keepalived_does(tmp_path: Path) -> None:
    text = MH.replace("    lvs_sched mh\n    mh-port\n", "    mh-port\n    lvs_sched mh\n")
    result, config = imported(tmp_path, text)
    assert one(config).flags == MH_FALLBACK
    assert any(":3: mh-port before or without 'lvs_sched mh'" in n for n in notes(result))


def test_flag_1_and_flag_2_are_the_mh_flags(tmp_path: Path) -> None:
    text = MH.replace("mh-port", "flag-2").replace("mh-fallback", "flag-1")
    assert one(imported(tmp_path, text)[1]).flags == MH_PORT | MH_FALLBACK
    sh = text.replace("lvs_sched mh", "lb_algo sh")
    result, config = imported(tmp_path, sh)
    assert (one(config).scheduler, one(config).flags) == ("sh", 0)
    assert sum("no mhd equivalent (mhd sets flags for mh only)" in n for n in notes(result)) == 2


def test_keepalived_defaults_udp_wlc_nat(tmp_path: Path) -> None:
    result, config = imported(tmp_path, "virtual_server 10.0.0.1 53 {\n real_server 10.1.0.1 53\n}\n")
    svc = one(config)
    assert (svc.key.protocol, svc.scheduler, svc.servers[0].forward) == (socket.IPPROTO_UDP, "wlc", 0)
    assert any(":1: no protocol: keepalived defaults to UDP" in n for n in notes(result))


def test_lower_case_forwarding_is_ignored_like_keepalived_does(tmp_path: Path) -> None:
    text = MH.replace("lvs_method DR", "lb_kind dr")
    result, config = imported(tmp_path, text)
    assert one(config).servers[0].forward == FORWARD_METHODS["nat"]
    assert any("keepalived knows NAT, DR and TUN" in n for n in notes(result))
    tun = MH.replace("lvs_method DR", "lvs_method TUN type gue port 6080")
    result, config = imported(tmp_path, tun)
    assert one(config).servers[0].forward == FORWARD_METHODS["tunnel"]
    assert any("tunnel options type gue port 6080" in n for n in notes(result))


def test_real_server_forwarding_overrides_the_virtual_server(tmp_path: Path) -> None:
    text = MH.replace("weight 3", "weight 3\n        lvs_method NAT")
    servers = one(imported(tmp_path, text)[1]).servers
    assert [s.forward for s in servers] == [FORWARD_METHODS["nat"], FORWARD_METHODS["dr"]]


def test_fwmark_service_takes_its_family_from_the_servers(tmp_path: Path) -> None:
    text = """virtual_server fwmark 7 {
    lvs_sched mh
    protocol TCP
    real_server 2001:db8::2 {
    }
    real_server 2001:db8::1 {
    }
}
"""
    result, config = imported(tmp_path, text)
    svc = one(config)
    assert (svc.key.fwmark, svc.key.family) == (7, socket.AF_INET6)
    assert [(str(s.address), s.port) for s in svc.servers] == [("2001:db8::2", 0), ("2001:db8::1", 0)]
    assert any("protocol with a fwmark service" in n for n in notes(result))


def test_no_equivalent_is_a_note_with_file_and_line(tmp_path: Path) -> None:
    text = """global_defs {
    router_id x
}
vrrp_instance VI_1 {
    virtual_router_id 5
}
virtual_server 10.0.0.1 80 {
    protocol TCP
    persistence_timeout 300
    sorry_server 10.9.9.9 80
    quorum 2
    real_server 10.1.0.1 80 {
        notify_up /bin/true
        uthreshold 100
        SMTP_CHECK {
        }
    }
    real_server 10.1.0.2 80 {
        weight 0
    }
    frobnicate 7
}
"""
    result, config = imported(tmp_path, text)
    assert [str(s.address) for s in one(config).servers] == ["10.1.0.1"]
    path = str(tmp_path / "keepalived.conf")
    expected = {
        1: "global_defs",
        4: "VRRP",
        9: "persistence",
        10: "sorry_server",
        11: "quorum",
        13: "notify_up",
        14: "uthreshold",
        15: "SMTP_CHECK",
        19: "weight 0",
        21: "'frobnicate'",
    }
    for line, word in expected.items():
        assert any(n.startswith(f"{path}:{line}: ") and word in n for n in notes(result)), (
            line,
            notes(result),
        )


CHECKED = """
virtual_server 10.0.0.1 443 {
    protocol TCP
    lvs_sched mh
    delay_loop 10
    connect_timeout 4
    retry 2
    virtualhost www.example.com
    real_server 10.1.0.1 443 {
        SSL_GET {
            url {
                path /healthz
                status_code 200 204-206
                regex "ok|fine"
            }
            enable_sni
            bindto 10.0.0.9
            connect_port 8443
        }
    }
}
"""


def test_ssl_get_with_inherited_timings(tmp_path: Path) -> None:
    check = one(imported(tmp_path, CHECKED)[1]).check
    assert (check.type, check.path, check.expect_status) == ("https", "/healthz", ((200, 200), (204, 206)))
    assert (check.host, check.sni, check.tls_verify, check.body_regex) == (
        "www.example.com",
        "www.example.com",
        False,
        "ok|fine",
    )
    assert (check.interval, check.timeout, check.rise, check.fall) == (10.0, 4.0, 1, 3)
    assert (check.port, check.source_address) == (8443, "10.0.0.9")


def test_checker_timings_override_the_real_server_and_virtual_server(tmp_path: Path) -> None:
    text = CHECKED.replace(
        "        SSL_GET {", "        delay_loop 5\n        alpha\n        SSL_GET {\n            retry 0"
    )
    check = one(imported(tmp_path, text)[1]).check
    assert (check.interval, check.timeout, check.fall, check.initial_state) == (5.0, 4.0, 1, "down")


def test_timeout_not_below_interval_is_shortened_with_a_note(tmp_path: Path) -> None:
    text = CHECKED.replace("connect_timeout 4", "connect_timeout 10")
    result, config = imported(tmp_path, text)
    assert one(config).check.timeout == 8.0
    assert any("timeout 10s is not shorter than the interval" in n for n in notes(result))


def test_http_defaults_and_extra_urls(tmp_path: Path) -> None:
    text = """virtual_server 10.0.0.1 80 {
    protocol TCP
    real_server 10.1.0.1 80 {
        HTTP_GET {
            url {
                path /a
                digest 0123
            }
            url {
                path /b
            }
        }
        TCP_CHECK {
        }
    }
}
"""
    result, config = imported(tmp_path, text)
    check = one(config).check
    assert (check.type, check.path, check.expect_status) == ("http", "/a", ((200, 299),))
    assert (check.interval, check.timeout, check.fall) == (60.0, 5.0, 2)  # keepalived's defaults
    for line, word in ((7, "digest"), (9, "a further url"), (13, "one check per server")):
        assert any(f":{line}: " in n and word in n for n in notes(result)), (line, notes(result))


def test_dns_udp_and_misc_checks(tmp_path: Path) -> None:
    text = """virtual_server 10.0.0.1 53 {
    protocol UDP
    delay_loop 3
    real_server 10.1.0.1 53 {
        DNS_CHECK {
            type aaaa
            name example.org
        }
    }
    real_server 10.1.0.2 53 {
        UDP_CHECK {
            payload 6869
            require_reply 6fXX
        }
    }
    real_server 10.1.0.3 53 {
        MISC_CHECK {
            misc_path "/usr/local/bin/check --quick 'a b'"
            misc_timeout 2
        }
    }
}
"""
    result, config = imported(tmp_path, text)
    dns, udp, misc = (s.check for s in one(config).servers)
    assert (dns.type, dns.query_type, dns.query_name, dns.fall) == ("dns", "AAAA", "example.org", 4)
    assert (udp.type, udp.payload, udp.expect_regex) == ("udp", b"hi", b"^\\x6f.")
    assert (misc.type, misc.command, misc.timeout, misc.fall) == (
        "exec",
        ("/usr/local/bin/check", "--quick", "a b"),
        2.0,
        1,
    )
    assert any("MISC_CHECK -> exec" in n for n in notes(result))


def test_udp_check_without_require_reply_is_a_note(tmp_path: Path) -> None:
    text = (
        "virtual_server 10.0.0.1 53 {\n protocol UDP\n real_server 10.1.0.1 53 {\n  UDP_CHECK {\n  }\n }\n}\n"
    )
    result, config = imported(tmp_path, text)
    assert one(config).check.type == "udp"
    assert any(":4: UDP_CHECK without require_reply" in n for n in notes(result))


def test_includes_globs_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.1.0.1 80\n}\ninclude ../more/*.conf\n"
    )
    (tmp_path / "conf.d" / "b.conf").write_text("virtual_server 10.0.0.2 80 {\n protocol TCP\n}\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "c.conf").write_text("virtual_server fwmark 3 {\n real_server 10.1.0.3 0\n}\n")
    result, config = imported(tmp_path, "include conf.d/*.conf\ninclude missing.conf\n")
    assert [str(s.key) for s in config.services] == ["tcp:10.0.0.1:80", "fwmark:3/ipv4", "tcp:10.0.0.2:80"]
    assert any(":2: include " in n and "missing.conf: cannot read" in n for n in notes(result))


def test_include_loops_and_self_globs_end(tmp_path: Path) -> None:
    (tmp_path / "b.conf").write_text(
        "include keepalived.conf\nvirtual_server 10.0.0.2 80 {\n protocol TCP\n}\n"
    )
    result, config = imported(tmp_path, "include *.conf\nvirtual_server 10.0.0.1 80 {\n protocol TCP\n}\n")
    assert sorted(str(s.key) for s in config.services) == ["tcp:10.0.0.1:80", "tcp:10.0.0.2:80"]
    assert any("include loop" in n for n in notes(result))


def test_conditional_lines_and_parameters(tmp_path: Path) -> None:
    text = """$VIP=10.0.0.7
$PORT=8080
@main $SCHED=mh
@^main $SCHED=rr
virtual_server $VIP ${PORT} {
    protocol TCP
    lvs_sched $SCHED
@backup real_server 10.1.0.9 80
    real_server 10.1.0.1 80
}
~SEQ(i, 1, 3) real_server 10.1.0.$i 80
"""
    result, config = imported(tmp_path, text, config_id="main")
    svc = one(config)
    assert (str(svc.key), svc.scheduler, [str(s.address) for s in svc.servers]) == (
        "tcp:10.0.0.7:8080",
        "mh",
        ["10.1.0.1"],
    )
    assert any(":8: conditional line for @backup" in n for n in notes(result))
    assert any(":11: ~SEQ" in n for n in notes(result))
    assert one(imported(tmp_path, text)[1]).scheduler == "rr"  # no config-id: @^main applies


def test_duplicate_services_and_bad_addresses(tmp_path: Path) -> None:
    text = """virtual_server 10.0.0.1 80 {
 protocol TCP
}
virtual_server 10.0.0.1 80 {
 protocol TCP
}
virtual_server www.example.com 80 {
}
virtual_server 10.0.0.2 0 {
 protocol TCP
 persistence_timeout 60
}
virtual_server group NOPE {
}
"""
    result, config = imported(tmp_path, text)
    assert [str(s.key) for s in config.services] == ["tcp:10.0.0.1:80"]
    for line, word in ((4, "already declared at"), (7, "not an IP address"), (9, "no port"), (13, "NOPE")):
        assert any(f":{line}: " in n and word in n for n in notes(result)), (line, notes(result))


# --- hostile input ------------------------------------------------------------------------------


def test_unbalanced_braces_are_notes(tmp_path: Path) -> None:
    text = "}\nvirtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.1.0.1 80 {\n"
    result, config = imported(tmp_path, text)
    assert [str(s.key) for s in config.services] == ["tcp:10.0.0.1:80"]
    assert any(":1: '}' without a block" in n for n in notes(result))
    assert any(":2: block 'virtual_server 10.0.0.1 80' is not closed" in n for n in notes(result))


def test_deep_nesting_and_long_lines_do_not_crash(tmp_path: Path) -> None:
    result, config = imported(tmp_path, "{" * 100_000 + "\n" + "x " * 100_000 + "\n" + "}" * 50_000)
    assert config.services == () and result.notes


def test_binary_huge_and_special_files_are_clear_errors(tmp_path: Path) -> None:
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"virtual_server\0\xff\xfe")
    with pytest.raises(ImportFailed, match=r"bin.conf: not a text file \(NUL byte at offset 14\)"):
        convert_file(str(binary))
    huge = tmp_path / "huge.conf"
    with huge.open("wb") as f:
        f.truncate(17 << 20)  # sparse: no disk used
    with pytest.raises(ImportFailed, match="too large"):
        convert_file(str(huge))
    with pytest.raises(ImportFailed, match="not a regular file"):
        convert_file(str(tmp_path))
    with pytest.raises(ImportFailed, match="not UTF-8"):
        binary.write_bytes(b"virtual_server \xff\n")
        convert_file(str(binary))
    result, _ = imported(tmp_path, "include bin.conf\ninclude huge.conf\ninclude /dev/zero\n")
    assert [n.line for n in result.notes] == [1, 2, 3]


def test_self_referencing_parameters_end(tmp_path: Path) -> None:
    text = "$A=${A}${A}\nvirtual_server ${A} 80 {\n}\n"
    result, config = imported(tmp_path, text)
    assert config.services == ()
    assert any("parameter substitution" in n for n in notes(result))


WORDS = [
    "virtual_server", "real_server", "virtual_server_group", "{", "}", "\n", "\n", "10.0.0.1", "10.0.0.2",
    "2001:db8::1", "80", "0", "1", "65536", "-3", "fwmark", "group", "G", "lvs_sched", "lb_algo", "mh", "rr",
    "none", "mh-port", "mh-fallback", "flag-1", "flag-2", "lb_kind", "DR", "TUN", "protocol", "TCP", "UDP",
    "weight", "delay_loop", "connect_timeout", "retry", "delay_before_retry", "alpha", "TCP_CHECK",
    "HTTP_GET", "SSL_GET", "DNS_CHECK", "UDP_CHECK", "MISC_CHECK", "url", "path", "status_code", "999",
    "misc_path", '"', "payload", "zz", "require_reply", "type", "name", "connect_port", "bindto", "include",
    "@x", "$P=1", "$P", "!", "#", "10.0.0.3-4", "10.0.0.0/8", "inet6", "virtualhost", "0.0001", "1e9", "\x01", "\x85", "é", "\u2028",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=80))
def test_any_token_soup_converts_to_a_valid_config(words: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keepalived.conf"
        path.write_text(" ".join(words))
        result = convert_file(str(path))
        loads(result.yaml, "soup.yaml")  # never invalid, never a traceback


def test_misc_check_without_misc_timeout_gets_one_below_the_interval(tmp_path: Path) -> None:
    text = "virtual_server 10.0.0.1 80 {\n protocol TCP\n delay_loop 5\n real_server 10.1.0.1 80 {\n  MISC_CHECK {\n   misc_path /bin/true\n  }\n }\n}\n"
    result, config = imported(tmp_path, text)
    assert (one(config).check.interval, one(config).check.timeout) == (5.0, 4.0)
    assert any(":5: MISC_CHECK without misc_timeout" in n for n in notes(result))
