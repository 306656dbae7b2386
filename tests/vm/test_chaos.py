"""Crash anywhere, kernel faults and a concurrent editor, on a small config (issue 11).

The full run, 1,000 services x 16 servers and over 100 kills, is bench/bench_chaos.py; this one
keeps its invariants at CI size (50 x 8, about 10 kills, 15 s of faults). See tests/vm/chaos.py.
"""

from __future__ import annotations

from pathlib import Path

import netns as nsh
import pytest
from chaos import Chaos, Layout

pytestmark = pytest.mark.slow


def test_kills_and_faults_converge_to_a_clean_apply(
    netns: nsh.NetnsFactory, tmp_path: Path, venv_python: str, report
) -> None:
    chaos = Chaos(netns("dir"), netns("ref"), tmp_path, Layout(50, 8, checked=4), venv_python,
                  seed=11, say=report, interval="2s")  # fmt: skip
    try:
        chaos.calibrate()
        for _ in range(2):
            chaos.chain(kills=4, converge_timeout=120)
        chaos.fault_phase(seconds=15, rate=0.05, converge_timeout=120)
        report(chaos.counts.summary(chaos.watcher))
    finally:
        chaos.close()
    counts, watcher = chaos.counts, chaos.watcher
    assert sum(counts.kills.values()) >= 10
    assert counts.differences == 0, "the kernel differs from a clean apply after convergence"
    assert counts.state_problems == []
    assert watcher.polls > 0 and watcher.zero_weight == [], watcher.zero_weight[:3]
    assert watcher.foreign_changed == [], watcher.foreign_changed[:3]
    assert sum(n for k, n in counts.faults.items() if k not in ("requests", "dumps")) > 0, counts.faults
    assert counts.editor_edits > 0
    before, _, after = chaos.cpu_fractions  # no busy loop: idle again once converged
    assert after < max(0.9, before * 1.5), counts.cpu
