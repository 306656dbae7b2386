"""Properties of the health state machine: the rules that decide when traffic moves."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhd.config.checkspec import CheckSpec
from mhd.health import (
    STALL_FRACTION,
    CheckResult,
    Health,
    Transition,
    inconclusive,
    initial,
    observe,
    probe_interval,
)
from mhd.probing.timers import StallLog

OK = CheckResult(True, 0.001, "HTTP 200", 0.0)
BAD = CheckResult(False, 1.0, "HTTP 500", 0.0)

specs = st.builds(
    CheckSpec,
    type=st.just("tcp"),
    rise=st.integers(1, 6),
    fall=st.integers(1, 6),
)
histories = st.lists(st.booleans(), max_size=80)
starts = st.sampled_from([Health("unknown"), Health("up"), Health("down")])


def run(h: Health, oks: list[bool], spec: CheckSpec) -> list[tuple[Health, Transition | None]]:
    steps = []
    for ok in oks:
        h, t = observe(h, OK if ok else BAD, spec)
        steps.append((h, t))
    return steps


@given(specs, starts, histories)
def test_streaks_count_consecutive_results(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    streak_ok = streak_bad = 0
    for ok, (after, _) in zip(oks, run(h, oks, spec), strict=True):
        streak_ok, streak_bad = (streak_ok + 1, 0) if ok else (0, streak_bad + 1)
        assert (after.successes, after.failures) == (streak_ok, streak_bad)
        assert after.last is (OK if ok else BAD)


@given(specs, starts, histories)
def test_transition_iff_state_changes(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    before = h
    for after, t in run(h, oks, spec):
        if t is None:
            assert after.state == before.state
            assert after.transitions == before.transitions
        else:
            assert (t.old, t.new) == (before.state, after.state)
            assert t.old != t.new
            assert after.transitions == before.transitions + 1
            assert t.reason
        before = after


@given(specs, starts, histories)
def test_state_follows_the_streak(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    """Up exactly when it was (or became) up and has not failed `fall` times in a row since."""
    for after, t in run(h, oks, spec):
        if after.successes >= spec.rise:
            assert after.state == "up"
        if after.failures >= spec.fall:
            assert after.state == "down"
        if t is not None and t.new == "up":
            assert after.successes == spec.rise
        if t is not None and t.new == "down":
            assert after.failures == spec.fall


@given(specs, starts, histories)
def test_flapping_is_bounded(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    """Between two transitions there are at least rise (to up) or fall (to down) probes."""
    last_index = None
    for i, (_, t) in enumerate(run(h, oks, spec)):
        if t is None:
            continue
        if last_index is not None:
            assert i - last_index >= (spec.rise if t.new == "up" else spec.fall)
        last_index = i
    transitions = sum(t is not None for _, t in run(h, oks, spec))
    assert transitions <= len(oks) // min(spec.rise, spec.fall) + 1


@given(specs, histories)
def test_in_kernel_server_stays_up_until_fall_failures(spec: CheckSpec, oks: list[bool]) -> None:
    """A restart never disturbs traffic: no removal before `fall` consecutive failures."""
    h = initial(True, spec)
    assert h.state == "up"
    for after, t in run(h, oks, spec):
        if t is not None:
            assert (t.new, after.failures) == ("down", spec.fall)
            break


@given(specs)
def test_missing_server_is_unknown_and_added_after_rise(spec: CheckSpec) -> None:
    h = initial(False, spec)
    assert h.state == "unknown"
    steps = run(h, [True] * spec.rise, spec)
    assert [t is not None for _, t in steps] == [False] * (spec.rise - 1) + [True]
    assert steps[-1][0].state == "up"


@given(specs, st.booleans(), st.sampled_from(["up", "down"]))
def test_initial_state_overrides(spec: CheckSpec, in_kernel: bool, state: str) -> None:
    spec = CheckSpec(type=spec.type, rise=spec.rise, fall=spec.fall, initial_state=state)  # type: ignore[arg-type]
    assert initial(in_kernel, spec).state == state


def test_no_check_is_up_at_once() -> None:
    assert initial(False, CheckSpec(type="none")).state == "up"


@given(specs, starts, histories)
def test_the_states_follow_from_the_results_alone(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    """Directors that see the same results decide the same: the states equal those of a model of
    rise and fall computed here from the start state and the results, with two counters."""
    state, ok_run, bad_run, want = h.state, 0, 0, []
    for ok in oks:
        ok_run, bad_run = (ok_run + 1, 0) if ok else (0, bad_run + 1)
        if ok_run >= spec.rise:
            state = "up"
        elif bad_run >= spec.fall:
            state = "down"
        want.append(state)
    assert [after.state for after, _ in run(h, oks, spec)] == want


def test_reason_names_the_streak_and_last_detail() -> None:
    spec = CheckSpec(type="tcp", rise=2, fall=3)
    h = initial(True, spec)
    t = None
    for _ in range(3):
        h, t = observe(h, BAD, spec)
    assert t == Transition("up", "down", "3 consecutive failures, last: HTTP 500")


# --- adaptive intervals ------------------------------------------------------------------------


@given(specs, starts, histories)
def test_default_interval_never_changes(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    assert {probe_interval(h, spec) for h, _ in run(h, oks, spec)} <= {spec.interval}


@given(specs, starts, histories)
def test_fast_while_undecided_slow_while_down(spec: CheckSpec, h: Health, oks: list[bool]) -> None:
    """Fast while the last result disagrees with the state (rise/fall still to decide), slow while
    the last result confirms down, the base interval otherwise."""
    spec = replace(spec, interval=2.0, fast_interval=0.5, down_interval=10.0)
    for after, _ in run(h, oks, spec):
        assert after.last is not None
        confirms = after.state == ("up" if after.last.ok else "down")
        expected = 2.0 if confirms and after.state == "up" else 10.0 if confirms else 0.5
        assert probe_interval(after, spec) == expected, after


def test_one_failure_of_an_up_server_probes_fast_until_fall_decides() -> None:
    spec = CheckSpec(type="tcp", interval=2.0, fall=3, fast_interval=0.5, down_interval=10.0)
    h = Health("up", successes=5)
    seen = []
    for _ in range(4):
        h, _ = observe(h, BAD, spec)
        seen.append((h.state, probe_interval(h, spec)))
    assert seen == [("up", 0.5), ("up", 0.5), ("down", 10.0), ("down", 10.0)]
    h, _ = observe(h, OK, spec)
    assert (h.state, probe_interval(h, spec)) == ("down", 0.5)  # rise 2: one more success to go


# --- starvation guard: a stalled checker does not blame the server ------------------------------

TIMED_OUT = CheckResult(False, 0.5, "timeout after 0.5s", 0.0, timed_out=True)


@given(st.floats(0, 10), st.floats(0.001, 10))
def test_only_a_timeout_across_a_long_stall_is_inconclusive(stalled: float, timeout: float) -> None:
    assert inconclusive(TIMED_OUT, stalled, timeout) == (stalled > STALL_FRACTION * timeout)
    assert not inconclusive(OK, stalled, timeout)  # a success is a success, stall or not
    assert not inconclusive(BAD, stalled, timeout)  # so is the server's own answer (a status code)
    refused = CheckResult(False, 0.001, "connection refused", 0.0)
    assert not inconclusive(refused, stalled, timeout)


@given(st.floats(0, 10), st.floats(0.001, 10), st.booleans())
def test_a_fault_of_the_directors_own_is_always_inconclusive(
    stalled: float, timeout: float, timed_out: bool
) -> None:
    local = CheckResult(False, 0.0, "too many open files", 0.0, timed_out, local=True)
    assert inconclusive(local, stalled, timeout)


def test_stall_log_longest_stretch_within_a_window() -> None:
    log = StallLog()
    for began, ended in ((1.0, 1.2), (2.0, 2.5), (2.6, 2.7)):
        log.note(began, ended)
    assert log.longest(0.0, 0.9) == 0.0  # before any stall
    assert log.longest(3.0, 4.0) == 0.0  # after them
    assert log.longest(0.0, 3.0) == pytest.approx(0.5)  # the longest, not the sum (0.8)
    assert log.longest(2.2, 3.0) == pytest.approx(0.3)  # clipped to the window
    assert log.longest(1.1, 2.1) == pytest.approx(0.1)


stalls = st.lists(st.tuples(st.floats(0, 5), st.floats(0, 2)), max_size=30)


@given(stalls, st.floats(0, 60), st.floats(0, 10))
def test_stall_log_agrees_with_brute_force(
    gaps: list[tuple[float, float]], start: float, length: float
) -> None:
    """The early stop of the scan (records end in time order) loses nothing."""
    log, records, t = StallLog(), [], 0.0
    for gap, stall in gaps:
        t += gap
        records.append((t, t + stall))
        log.note(t, t + stall)
        t += stall
    end = start + length
    expected = max([min(e, end) - max(b, start) for b, e in records] + [0.0])
    assert log.longest(start, end) == pytest.approx(expected)
