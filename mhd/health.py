"""Per-server health state machine: pure, deterministic, no I/O.

Kept apart from the prober so that the rules that decide when traffic moves can be tested
exhaustively (hypothesis) without sockets or clocks. The prober feeds it `CheckResult`s (defined
here, so that this module needs nothing of the probing layer) and acts on the `Transition`s it
returns.

Rules:

* ``rise`` consecutive successes take a server that is not up to ``up``;
* ``fall`` consecutive failures take a server that is not down to ``down``;
* ``unknown`` (a server not yet in the kernel) is treated as down by the daemon: it is added only
  once it has risen, and it never needs more than ``rise``/``fall`` probes to leave ``unknown``.

Consequently a flapping server changes state at most once per ``min(rise, fall)`` observations,
and between two transitions in opposite directions there are at least ``rise`` (towards up) or
``fall`` (towards down) observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from mhd.config.checkspec import CheckSpec

State = Literal["unknown", "up", "down"]


class CheckResult(NamedTuple):
    """Outcome of one probe. ``latency`` in seconds, ``at`` wall-clock start time; ``timed_out``
    when the probe's own deadline ended it (the prober then asks whether its loop was stalled);
    ``local`` when it could not run for a fault of the director's own (out of file descriptors,
    memory or buffers, a source address that vanished), which says nothing about the server.
    A NamedTuple, as `Health`: one is built per probe, and a frozen dataclass costs 3x more."""

    ok: bool
    latency: float
    detail: str
    at: float
    timed_out: bool = False
    local: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, with the human-readable reason the operator sees in the log."""

    old: State
    new: State
    reason: str


class Health(NamedTuple):
    """What is known about one server; successes/failures count the current streak only.

    Immutable; a NamedTuple rather than a frozen dataclass because every probe builds one."""

    state: State = "unknown"
    successes: int = 0
    failures: int = 0
    transitions: int = 0
    last: CheckResult | None = None


def initial(in_kernel: bool, spec: CheckSpec) -> Health:
    """Start-up state, chosen so that a daemon restart never disturbs traffic.

    A server already in the kernel was serving: keep it up until it really fails ``fall`` times.
    A missing one is unknown and is added only after ``rise`` successes. A server without a check
    (type ``none``) is up at once: waiting ``rise`` probes of a check that cannot fail would only
    delay it. ``spec.initial_state`` overrides all of this.
    """
    if spec.initial_state is not None:
        return Health(state=spec.initial_state)
    return _UP if in_kernel or spec.type == "none" else _UNKNOWN


# One instance each (a Health is immutable): a 100,000-server start builds 100,000 initial states.
_UP = Health(state="up")
_UNKNOWN = Health(state="unknown")


def observe(h: Health, result: CheckResult, spec: CheckSpec) -> tuple[Health, Transition | None]:
    """Fold one probe result into the state; return the transition it caused, if any."""
    if result.ok:
        successes, failures = h.successes + 1, 0
        new: State = "up" if successes >= spec.rise else h.state
    else:
        successes, failures = 0, h.failures + 1
        new = "down" if failures >= spec.fall else h.state
    if new == h.state:
        return Health(h.state, successes, failures, h.transitions, result), None
    transition = Transition(h.state, new, _reason(result, successes or failures))
    return Health(new, successes, failures, h.transitions + 1, result), transition


def probe_interval(h: Health, spec: CheckSpec) -> float:
    """Seconds until the next probe of a server in state ``h``.

    ``spec.fast_interval`` while a streak runs against the state (a failure of a server that is
    not down, a success of one that is not up), so that rise/fall decide sooner; then
    ``spec.down_interval`` while the server is down and not recovering; else ``spec.interval``.
    With neither set (the default) always ``spec.interval``.
    """
    against = (h.failures and h.state != "down") or (h.successes and h.state != "up")
    if spec.fast_interval is not None and against:
        return spec.fast_interval
    if spec.down_interval is not None and h.state == "down" and not h.successes:
        return spec.down_interval
    return spec.interval


def _reason(result: CheckResult, streak: int) -> str:
    kind = "success" if result.ok else "failure"
    plural = "" if streak == 1 else ("es" if result.ok else "s")
    return f"{streak} consecutive {kind}{plural}, last: {result.detail}"


STALL_FRACTION = 0.25  # of a probe's timeout: a longer stall of the checker's loop voids a timeout


def inconclusive(result: CheckResult, stalled: float, timeout: float) -> bool:
    """Whether a failed probe says nothing about the server: the director's own fault
    (``result.local``), or a timeout while the checker stalled.

    ``stalled`` is the longest stretch (seconds) during the probe in which the checker's own
    event loop ran nothing: blocked by a slow callback, or the process not scheduled. A probe
    that *timed out* across such a stretch may have timed out only because its answer was not
    read in time, so when the stretch exceeds `STALL_FRACTION` of the timeout the result must
    neither count as a failure nor break a success streak. Any other failure (refused, reset, a
    status code, an exit code) is the server's answer, stall or not; so is every success.
    """
    if result.ok:
        return False
    return result.local or (result.timed_out and stalled > STALL_FRACTION * timeout)


def has_verdict(h: Health, spec: CheckSpec) -> bool:
    """Whether the checks have judged the server yet: a probe result decided its state, or it has
    no check to wait for. A server that starts `up` because it was in the kernel at a restart has
    no verdict until its first probe: the announcement policy never announces on an assumption."""
    return spec.type == "none" or (h.last is not None and h.state != "unknown")
