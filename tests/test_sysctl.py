"""kernel.sysctl: names under net.ipv4.vs only, existing on the kernel, integers; defaults; diff; edge."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mhd.sysctl import DEFAULTS, Change, diff, effective, read, short_name, sync, validate, write

KERNEL = {
    "sloppy_tcp",
    "sloppy_sctp",
    "conntrack",
    "expire_nodest_conn",
    "expire_quiescent_template",
    "schedule_icmp",
}


def test_names_must_be_under_net_ipv4_vs() -> None:
    assert short_name("net.ipv4.vs.sloppy_tcp") == "sloppy_tcp"
    assert short_name("net/ipv4/vs/conntrack") == "conntrack"
    assert short_name("net.ipv4.ip_forward") is None
    assert short_name("net.ipv4.vs.") is None
    assert short_name("net.ipv4.vs.a.b") is None


def test_validate_reports_each_problem_with_the_fix() -> None:
    settings, problems = validate(
        {
            "net.ipv4.vs.sloppy_tcp": 1,
            "net.ipv4.ip_forward": 1,
            "net.ipv4.vs.sloppy_tpc": 1,
            "net.ipv4.vs.conntrack": "yes",
            "net.ipv4.vs.expire_nodest_conn": True,
            "net.ipv4.vs.sloppy_sctp": None,
        },
        KERNEL,
    )
    assert settings == {"sloppy_tcp": 1, "sloppy_sctp": None}
    messages = dict(problems)
    assert "only names under net.ipv4.vs." in messages["net.ipv4.ip_forward"]
    assert "did you mean net.ipv4.vs.sloppy_tcp?" in messages["net.ipv4.vs.sloppy_tpc"]
    assert "must be an integer, not 'yes'" in messages["net.ipv4.vs.conntrack"]
    assert "must be an integer" in messages["net.ipv4.vs.expire_nodest_conn"]


def test_validate_without_a_kernel_checks_names_and_types_only() -> None:
    assert validate({"net.ipv4.vs.anything": 3}) == ({"anything": 3}, [])


def test_effective_lays_the_config_over_the_defaults() -> None:
    assert effective({}) == DEFAULTS
    eff = effective({"conntrack": 1, "sloppy_sctp": None, "schedule_icmp": 1}, KERNEL)
    want = {k: v for k, v in DEFAULTS.items() if k != "sloppy_sctp"} | {"conntrack": 1, "schedule_icmp": 1}
    assert eff == want
    # a kernel without IPVS SCTP support: the default is skipped, not an error
    assert "sloppy_sctp" not in effective({}, KERNEL - {"sloppy_sctp"})


values = st.dictionaries(st.sampled_from(sorted(KERNEL)), st.integers(0, 3))
read_values = st.dictionaries(st.sampled_from(sorted(KERNEL)), st.none() | st.integers(0, 3))


@given(desired=values, current=read_values)
def test_diff_changes_exactly_the_differing_settings(
    desired: dict[str, int], current: dict[str, int | None]
) -> None:
    changes = diff(desired, current)
    assert {c.name for c in changes} == {k for k, v in desired.items() if current.get(k) != v}
    applied = {**current, **{c.name: c.desired for c in changes}}
    assert diff(desired, applied) == []


def test_edge_reads_writes_and_repairs_drift(tmp_path: Path) -> None:
    for name, value in (("sloppy_tcp", 0), ("conntrack", 0), ("expire_nodest_conn", 1)):
        (tmp_path / name).write_text(f"{value}\n")
    desired = {"sloppy_tcp": 1, "conntrack": 0, "expire_nodest_conn": 1}
    assert read(desired, tmp_path) == {"sloppy_tcp": 0, "conntrack": 0, "expire_nodest_conn": 1}
    changes, failures = sync(desired, tmp_path)
    assert changes == [Change("sloppy_tcp", 0, 1)] and failures == []
    assert (tmp_path / "sloppy_tcp").read_text() == "1\n"
    assert sync(desired, tmp_path) == ([], [])


def test_a_failed_write_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    (tmp_path / "conntrack").write_text("1\n")
    failures = write([Change("missing/dir", None, 1), Change("conntrack", 1, 0)], tmp_path)
    assert [c.name for c, _ in failures] == ["missing/dir"]
    assert (tmp_path / "conntrack").read_text() == "0\n"
    assert Change("conntrack", None, 0).describe() == "net.ipv4.vs.conntrack: ? -> 0"
