"""Incremental reloads: whatever the edit, `ConfigReloader.load` equals a full `load`, and the common
edits (a weight, a server, a service) take the shortcut."""

from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhd.config import reload as reload_module
from mhd.config import yamlsource
from mhd.config.diff import replaced_services
from mhd.config.records import Config
from mhd.config.reload import ConfigReloader
from mhd.config.validate import load
from mhd.config.yamlsource import ConfigError


def service_block(i: int, servers: int, *, column: int = 2, weight: int = 1, check: bool = False) -> list[str]:
    pad = " " * column
    lines = [f"{pad}- name: s{i}", f"{pad}  address: 10.1.{i // 250}.{i % 250 + 1}", f"{pad}  port: 80"]
    if check:
        lines += [f"{pad}  check:", f"{pad}    type: tcp", f"{pad}    interval: 2s"]
    lines.append(f"{pad}  servers:")
    lines += [f"{pad}    - {{address: 10.2.{i}.{j + 1}, weight: {weight + j}}}" for j in range(servers)]
    return lines


def document(services: int = 4, servers: int = 3, *, column: int = 2, defaults_after: bool = False) -> list[str]:
    top = ["reconcile-interval: 5s", "# the services", "services:"]
    body: list[str] = []
    for i in range(services):
        body += service_block(i, servers, column=column, check=i % 2 == 1)
        if i == 1:
            body.append("  # a comment between services, not ASCII: café ☕ (offsets are bytes)")
    defaults = ["defaults:", "  check: {type: none, rise: 3}", "  mh-port: true"]
    return (top + body + defaults) if defaults_after else (defaults + top + body)


def outcome(loader: object, path: Path) -> Config | list[str]:
    try:
        return loader.load(path) if isinstance(loader, ConfigReloader) else load(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]


def write(path: Path, lines: list[str], newline_at_end: bool = True) -> None:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""), encoding="utf-8")


def loaded(tmp_path: Path, lines: list[str]) -> tuple[Path, ConfigReloader, Config]:
    """A file with `lines`, and a reloader that has loaded it once (its snapshot)."""
    path = tmp_path / "mhd.yaml"
    write(path, lines)
    reloader = ConfigReloader()
    return path, reloader, reloader.load(path)


# Edits an operator makes, and a few that must not fool the shortcut.
EDIT_LINES = [
    "    - {address: 10.9.9.9, weight: 7}",
    "      - {address: 10.9.9.9, weight: 7}",
    "      - {address: 10.9.9.9, weight: 0}",
    "      - 10.9.9.8:80",
    "  - name: added",
    "    address: 10.7.7.7",
    "    port: 80",
    "    servers: [10.8.8.8]",
    "  - name: s0",
    "    weight: 2",
    "  bogus: 1",
    "defaults:",
    "- name: x",
    "---",
    "    check: *ref",
    "    check: &ref {type: tcp}",
    "\tservers:",
    "  # only a comment",
    "",
    "    mh-port: false",
    "    scheduler: wrr",
    "      - {address: 10.2.0.1}",
    "   - name: odd",
    "    servers:",
    "    address: 10.1.0.1",
    "    # ünïcode ✓",
    '    name: "s-ü"',
    # hostile values inside one service: the shortcut must fail exactly as the full load does
    "      - {address: 10.9.9.9, weight: !!int abc}",
    "    port: !!timestamp abc",
    "    check: {type: tcp, interval: .nan}",
    "    check: {type: tcp, timeout: .inf}",
    "    servers: [10.1.0.9:0]",
    "    address: 10.1.0.\x00",
    "    name: !foo x",
    "    servers: !!set {a}",
]


@st.composite
def edits(draw: st.DrawFn, size: int) -> list[tuple[str, int, str]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "weight"]))
        out.append((kind, draw(st.integers(0, size + 8)), draw(st.sampled_from(EDIT_LINES))))
    return out


def apply_edit(lines: list[str], kind: str, at: int, text: str) -> list[str]:
    at = min(at, len(lines))
    if kind == "insert":
        return [*lines[:at], text, *lines[at:]]
    if kind == "delete" or at == len(lines):
        return lines[:at] + lines[at + 1 :]
    if kind == "weight":
        return [line.replace("weight: ", "weight: 1", 1) if n == at else line for n, line in enumerate(lines)]
    return [*lines[:at], text, *lines[at + 1:]]


@settings(max_examples=400)
@given(
    layout=st.sampled_from([{}, {"defaults_after": True}, {"column": 0}]),
    newline_at_end=st.booleans(),
    rounds=st.lists(edits(40), min_size=1, max_size=4),
)
def test_any_edit_loads_exactly_as_a_full_load(
    tmp_path_factory: pytest.TempPathFactory, layout: dict, newline_at_end: bool, rounds
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "mhd.yaml"
    lines = document(**layout)
    write(path, lines, newline_at_end)
    reloader = ConfigReloader()
    before = outcome(reloader, path)
    assert before == outcome(None, path)
    for round_ in rounds:
        for kind, at, text in round_:
            lines = apply_edit(lines, kind, at, text)
        write(path, lines, newline_at_end)
        after = outcome(reloader, path)
        full = outcome(None, path)
        assert after == full, "\n".join(lines)
        with mock.patch.object(reload_module, "_GROUP", 2):  # a first load, services read in groups
            assert outcome(ConfigReloader(), path) == full, "\n".join(lines)
        if isinstance(before, Config) and isinstance(after, Config):
            assert_replaced_is_the_edit(reloader, before, after)
        before = after if isinstance(after, Config) else before


def assert_replaced_is_the_edit(reloader: ConfigReloader, before: Config, after: Config) -> None:
    """What the daemon adopts by: every service equal to one of the same name before is that very
    object (its health targets are kept), and `replaced` lists exactly the others."""
    old = {s.name: s for s in before.services}
    for svc in after.services:
        if old.get(svc.name) == svc:
            assert old[svc.name] is svc, svc.name
    if reloader.replaced is not None:
        assert reloader.replaced == replaced_services(before, after)


@pytest.mark.parametrize("layout", [{}, {"defaults_after": True}, {"column": 0}])
def test_common_edits_take_the_shortcut(tmp_path: Path, layout: dict) -> None:
    lines = document(services=6, **layout)
    path, reloader, _ = loaded(tmp_path, lines)
    pad = " " * layout.get("column", 2)
    steps = [
        ("a weight", lambda ls: [ls_.replace("10.2.3.2, weight: 2", "10.2.3.2, weight: 9") for ls_ in ls]),
        ("a server added", lambda ls: [*ls[:ls.index(f"{pad}- name: s2") + 5], f"{pad}    - 10.2.2.77", *ls[ls.index(f"{pad}- name: s2") + 5:]]),
        ("a server removed", lambda ls: [x for x in ls if "10.2.4.1," not in x]),
        ("a service added", lambda ls: ls[: ls.index(f"{pad}- name: s3")] + service_block(40, 2, column=len(pad))
         + ls[ls.index(f"{pad}- name: s3") :]),
        ("a service removed", lambda ls: ls[: ls.index(f"{pad}- name: s1")] + ls[ls.index(f"{pad}- name: s2") :]),
        ("a service appended", lambda ls: ls[: ls.index("defaults:")] + service_block(41, 2, column=len(pad))
         + ls[ls.index("defaults:") :] if layout.get("defaults_after") else ls + service_block(41, 2, column=len(pad))),
        ("nothing", lambda ls: ls),
    ]  # fmt: skip
    for n, (what, change) in enumerate(steps, 1):
        lines = change(lines)
        write(path, lines)
        assert reloader.load(path) == load(path), what
        assert reloader.incremental_loads == n, what


def test_the_shortcut_re_reads_only_the_changed_service(tmp_path: Path) -> None:
    path, reloader, before = loaded(tmp_path, document(services=50, servers=16))
    write(path, [x.replace("10.2.20.5, weight: 5", "10.2.20.5, weight: 6") for x in document(services=50, servers=16)])
    after = reloader.load(path)
    assert reloader.incremental_loads == 1
    changed = [i for i, (a, b) in enumerate(zip(before.services, after.services, strict=True)) if a is not b]
    assert changed == [20]
    assert after.services[20].servers[4].weight == 6 and after.sha256 != before.sha256


def test_errors_from_an_edit_name_the_right_line(tmp_path: Path) -> None:
    lines = document(services=5)
    path, reloader, _ = loaded(tmp_path, lines)
    at = next(n for n, line in enumerate(lines) if "10.2.3.1, weight: 1" in line)
    lines[at] = lines[at].replace("weight: 1", "weight: 0")
    write(path, lines)
    with pytest.raises(ConfigError) as info:
        reloader.load(path)
    assert [p.line for p in info.value.problems] == [at + 1]
    assert "services[3].servers[0].weight" in str(info.value)


def test_a_duplicate_name_from_an_edit_is_reported_with_both_places(tmp_path: Path) -> None:
    lines = document(services=5)
    path, reloader, _ = loaded(tmp_path, lines)
    write(path, [x.replace("- name: s4", "- name: s1") for x in lines])
    with pytest.raises(ConfigError) as info:
        reloader.load(path)
    assert "service name 's1' is used twice" in str(info.value)
    write(path, lines)  # back to the good file: loads again, by the full path (no snapshot of a bad file)
    assert reloader.load(path) == load(path)


def test_anchors_disable_the_shortcut(tmp_path: Path) -> None:
    lines = document(services=3)
    lines[lines.index("  - name: s0") + 2] += "\n    check: &c {type: tcp}"
    lines[lines.index("  - name: s2") + 2] += "\n    check: *c"
    path, reloader, _ = loaded(tmp_path, lines)
    write(path, [x.replace("&c {type: tcp}", "&c {type: tcp, rise: 5}") for x in lines])
    config = reloader.load(path)
    assert reloader.incremental_loads == 0
    assert config.services[2].check.rise == 5  # the alias followed its anchor


def test_edits_spread_over_the_file_re_read_only_the_changed_services(tmp_path: Path) -> None:
    """A file regenerated whole (config management) with a few services changed far apart: the
    shortcut parses those, and every other service stays the very same object."""
    lines = document(services=60, servers=4)
    path, reloader, before = loaded(tmp_path, lines)
    edited = [x.replace("10.2.5.2, weight: 2", "10.2.5.2, weight: 7") for x in lines]
    edited = [x for x in edited if "10.2.30.3," not in x]  # a server of s30 removed
    at = edited.index("  - name: s55")
    edited = edited[:at] + service_block(99, 2) + edited[at:]  # a service added before s55
    write(path, edited)
    after = reloader.load(path)
    assert after == load(path) and reloader.incremental_loads == 1
    assert reloader.replaced is not None
    gone, came = reloader.replaced
    assert sorted(s.name for s in gone) == ["s30", "s5"]
    assert sorted(s.name for s in came) == ["s30", "s5", "s99"]
    assert sum(1 for a in after.services for b in before.services if a is b) == 58


@pytest.mark.parametrize("layout", [{}, {"defaults_after": True}, {"column": 0}])
def test_a_first_load_reads_the_services_a_group_at_a_time(tmp_path: Path, layout: dict) -> None:
    """Regression (issue 15): a 100,000-server file held its whole node tree at once, 340 MB."""
    path = tmp_path / "mhd.yaml"
    write(path, document(services=9, **layout))
    reloader = ConfigReloader()
    with mock.patch.object(reload_module, "_GROUP", 4):
        config = reloader.load(path)
    assert reloader.piecewise_loads == 1 and config == load(path)
    write(path, [line.replace("weight: 2", "weight: 5") for line in document(services=9, **layout)])
    assert reloader.load(path) == load(path) and reloader.incremental_loads == 1  # its snapshot serves


@pytest.mark.parametrize(
    "edit",
    [
        lambda lines: [*lines, "  - name: s3", "    address: 10.9.0.1", "    servers: [10.9.1.1]"],  # a name twice
        lambda lines: [*lines, "services: []"],  # the key twice
        lambda lines: [line.replace("weight: 2", "weight: x") for line in lines],  # an error in one group
        lambda lines: [line.replace("reconcile-interval: 5s", "reconcile-interval: soon") for line in lines],
    ],
)
def test_a_first_load_with_a_problem_reports_what_the_full_load_reports(tmp_path: Path, edit) -> None:
    path = tmp_path / "mhd.yaml"
    write(path, edit(document(services=9)))
    reloader = ConfigReloader()
    with mock.patch.object(reload_module, "_GROUP", 4):
        got = outcome(reloader, path)
    assert isinstance(got, list) and got == outcome(None, path) and reloader.piecewise_loads == 0


def test_the_bound_on_values_holds_for_a_file_read_in_parts(tmp_path: Path) -> None:
    """MAX_NODES bounds a whole file. A load that reads the services a group at a time, or a reload
    that re-reads some of them, must refuse what the whole load refuses, not give each part a
    budget of its own."""
    path, reloader, _ = loaded(tmp_path, document(services=9))
    total = reloader._last.nodes if reloader._last is not None else 0
    assert total > 50

    def bounded(limit: int) -> contextlib.AbstractContextManager[object]:
        stack = contextlib.ExitStack()
        stack.enter_context(mock.patch.object(yamlsource, "MAX_NODES", limit))
        stack.enter_context(mock.patch.object(reload_module, "MAX_NODES", limit))
        stack.enter_context(mock.patch.object(reload_module, "_GROUP", 2))
        return stack

    with bounded(total - 1):
        got = outcome(ConfigReloader(), path)
        assert isinstance(got, list) and "more than" in got[0] and got == outcome(None, path)
    with bounded(total + 1):
        reloader = ConfigReloader()
        assert isinstance(reloader.load(path), Config)
        lines = document(services=9)
        at = lines.index("      - {address: 10.2.4.1, weight: 1}")
        write(path, [*lines[: at + 1], "      - {address: 10.2.4.9}", *lines[at + 1 :]])  # 2 values more
        got = outcome(reloader, path)
        assert isinstance(got, list) and "more than" in got[0] and got == outcome(None, path)


def test_successive_edits_all_take_the_shortcut(tmp_path: Path) -> None:
    """Regression: the node count after an edit was the last total counted twice, so every second
    reload took the full load (minutes at 100,000 servers under emulation)."""
    path, reloader, _ = loaded(tmp_path, document(services=9))
    total = reloader._last.nodes if reloader._last is not None else 0
    for weight in range(2, 7):
        write(path, [line.replace("weight: 1}", f"weight: {weight}}}") for line in document(services=9)])
        assert reloader.load(path) == load(path)
    assert reloader.incremental_loads == 5
    assert reloader._last is not None and total < reloader._last.nodes <= 6 * total  # each edit re-read at most all
