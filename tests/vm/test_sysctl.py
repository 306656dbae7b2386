"""mhd.sysctl against the real kernel: the IPVS settings of one namespace are read, validated against
what the kernel has, set, and left alone in every other namespace."""

from __future__ import annotations

import netns as nsh

from mhd import sysctl


def test_defaults_exist_are_applied_in_one_namespace_only(netns) -> None:  # type: ignore[no-untyped-def]
    director, other = netns("sc"), netns("sc")
    with nsh.in_netns(director):
        names = sysctl.available()
        assert {"sloppy_tcp", "expire_nodest_conn", "expire_quiescent_template", "conntrack"} <= names
        settings, problems = sysctl.validate({"net.ipv4.vs.sloppy_tcp": 1, "net.ipv4.vs.nosuch": 1}, names)
        assert [name for name, _ in problems] == ["net.ipv4.vs.nosuch"]
        desired = sysctl.effective(settings, names)
        before = sysctl.read(desired)
        changes, failures = sysctl.sync(desired)
        assert failures == [] and {c.name for c in changes} == {
            k for k, v in desired.items() if before[k] != v
        }
        assert sysctl.read(desired) == desired
        assert sysctl.sync(desired) == ([], [])  # in sync: nothing written
    with nsh.in_netns(other):
        assert sysctl.read(["sloppy_tcp"]) == {"sloppy_tcp": 0}  # per namespace: untouched here
    # Drift made by hand in the director is found and repaired.
    nsh.sysctl(director, "net.ipv4.vs.sloppy_tcp", 0)
    with nsh.in_netns(director):
        changes, failures = sysctl.sync(desired)
        assert [c.describe() for c in changes] == ["net.ipv4.vs.sloppy_tcp: 0 -> 1"] and failures == []
