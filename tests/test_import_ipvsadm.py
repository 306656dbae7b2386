"""mhctl import ipvsadm: `ipvsadm -Sn` output or an `ipvsadm -R` script -> a valid mhd.yaml."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhd.config.records import Config
from mhd.config.validate import loads
from mhd.importers import Imported, ImportFailed
from mhd.importers.ipvsadm import convert_file, convert_text
from mhd.model import FORWARD_METHODS, MH_FALLBACK, MH_PORT

SAVED = """\
-A -t 10.0.100.1:80 -s mh -b mh-port,mh-fallback
-a -t 10.0.100.1:80 -r 10.1.0.1:80 -m -w 1
-a -t 10.0.100.1:80 -r 10.1.0.2:8080 -m -w 3
-A -u [fd00::1]:53 -s mh -b flag-2
-a -u [fd00::1]:53 -r [fd01::2]:53 -g -w 1
-A -f 7 -s rr
-a -f 7 -r 10.1.0.5:0 -i -w 2
-A -f 8 -6 -s mh -b flag-1
-a -f 8 -6 -r [fd01::8]:0 -g -w 1
-A --sctp-service 10.0.100.3:3868 -s wrr
-a --sctp-service 10.0.100.3:3868 -r 10.1.0.7:3868 -g -w 5
-a --sctp-service 10.0.100.3:3868 -r 10.1.0.8:3868 -m -w 1
"""


def imported(text: str) -> tuple[Imported, Config]:
    result = convert_text(text, "rules")
    return result, loads(result.yaml, "imported.yaml")


def notes(result: Imported) -> list[str]:
    return [str(n) for n in result.notes]


def test_saved_rules_convert_with_every_setting() -> None:
    result, config = imported(SAVED)
    by_key = {str(s.key): s for s in config.services}
    assert list(by_key) == [
        "tcp:10.0.100.1:80",
        "udp:[fd00::1]:53",
        "fwmark:7/ipv4",
        "fwmark:8/ipv6",
        "sctp:10.0.100.3:3868",
    ]
    web = by_key["tcp:10.0.100.1:80"]
    assert (web.scheduler, web.flags) == ("mh", MH_PORT | MH_FALLBACK)
    assert [(str(s.address), s.port, s.weight, s.forward) for s in web.servers] == [
        ("10.1.0.1", 80, 1, FORWARD_METHODS["nat"]),
        ("10.1.0.2", 8080, 3, FORWARD_METHODS["nat"]),
    ]
    assert by_key["udp:[fd00::1]:53"].flags == MH_PORT
    assert by_key["fwmark:8/ipv6"].flags == MH_FALLBACK
    assert by_key["fwmark:7/ipv4"].servers[0].forward == FORWARD_METHODS["tunnel"]
    sctp = by_key["sctp:10.0.100.3:3868"]
    assert [s.forward for s in sctp.servers] == [FORWARD_METHODS["dr"], FORWARD_METHODS["nat"]]
    assert all(s.check.type == "none" for s in config.services)
    assert any("ipvsadm has no health checks" in n for n in notes(result))


def test_long_options_a_leading_ipvsadm_and_defaults() -> None:
    text = (
        "ipvsadm --add-service --tcp-service 10.0.0.1:80\n"
        "ipvsadm --add-server --tcp-service 10.0.0.1:80 --real-server 10.1.0.1 --weight 2\n"
    )
    config = imported(text)[1]
    svc = config.services[0]
    assert (svc.scheduler, svc.key.protocol) == ("wlc", socket.IPPROTO_TCP)  # ipvsadm's default scheduler
    assert [(s.port, s.weight, s.forward) for s in svc.servers] == [(80, 2, FORWARD_METHODS["dr"])]


def test_no_equivalent_is_a_note_with_its_line() -> None:
    text = """-C
-A -u 10.0.0.1:53 -s rr -p 300 -o -M 255.255.255.0
-a -u 10.0.0.1:53 -r 10.1.0.1:53 -m -w 0
-a -u 10.0.0.1:53 -r 10.1.0.2:53 -m -w 1 -x 100 -y 10
-a -u 10.0.0.9:53 -r 10.1.0.3:53 -m -w 1
-A -t 10.0.0.1:80 -s sh -b sh-port
-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r [fd01::1]:80 -m -w 1
--set 5 5 5
"""
    result, config = imported(text)
    assert [str(s.key) for s in config.services] == ["udp:10.0.0.1:53", "tcp:10.0.0.1:80"]
    assert [str(s.address) for s in config.services[0].servers] == ["10.1.0.2"]
    expected = {
        1: "-C",
        2: "persistence",
        3: "weight 0",
        4: "-x 100",
        5: "not added before",
        6: "sh-port",
        7: "added twice",
        8: "IPv6 but the service is IPv4",
        9: "--set",
    }
    for line, word in expected.items():
        assert any(n.startswith(f"rules:{line}: ") and word in n for n in notes(result)), (
            line,
            notes(result),
        )
    assert any("rules:2: -o" in n for n in notes(result))
    assert any("rules:2: -M 255.255.255.0" in n for n in notes(result))


def test_names_instead_of_numbers_and_garbage_are_notes() -> None:
    text = '-A -t www.example.com:http -s rr\n-A -t 10.0.0.1:80 -s "rr\n-Z\n-A -t 10.0.0.1:80 --bogus\n'
    result, config = imported(text)
    assert config.services == ()
    for line in (1, 2, 3, 4):
        assert any(n.startswith(f"rules:{line}: ") for n in notes(result)), (line, notes(result))


def test_files_must_be_text(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    path.write_bytes(b"-A -t 10.0.0.1:80\0")
    with pytest.raises(ImportFailed, match="rules: not a text file"):
        convert_file(str(path))
    path.write_text(SAVED)
    assert convert_file(str(path)).services == 5


WORDS = [
    "-A", "-a", "-t", "-u", "-f", "--sctp-service", "-r", "-s", "-b", "-w", "-g", "-m", "-i", "-p", "-6", "-o",
    "-M", "-x", "10.0.0.1:80", "10.0.0.1", "[fd00::1]:80", "fd00::1", "10.1.0.1:0", "10.1.0.2:80", "7", "0",
    "65536", "mh", "rr", "none", "mh-port,mh-fallback", "flag-1", "sh-port", "\n", "\n", '"', "#", "-C", "\x01", "\x85", "é", "\u2028",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=60))
def test_any_token_soup_converts_to_a_valid_config(words: list[str]) -> None:
    loads(convert_text(" ".join(words)).yaml, "soup.yaml")
