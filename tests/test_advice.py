"""Fleet advice: mh without mh-port, more servers than the table balances within 1 %, shifted weights."""

from __future__ import annotations

import math
from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from mhd.advice import advise, positions, shifted_weights
from mhd.config.validate import loads, validate
from mhd.config.yamlsource import parse
from mhd.maglev.table import MhDest, build_table

CONFIG = """\
services:
  - name: dns
    address: 203.0.113.53
    port: 53
    protocol: udp
    mh-port: true
    servers: [10.0.0.1, 10.0.0.2]
  - name: web
    address: 203.0.113.80
    port: 80
    servers:
      - {address: 10.0.0.1, weight: 1}
      - {address: 10.0.0.2, weight: 100}
  - name: rr
    address: 203.0.113.81
    port: 80
    scheduler: rr
    servers: [10.0.0.1]
"""


def test_each_warning_names_the_service_and_its_line() -> None:
    root = parse(CONFIG, "mhd.yaml")
    config, _ = validate(root, "mhd.yaml", None, "")
    warnings = advise(config, 12, positions("mhd.yaml", root))
    assert [(w.service, w.code) for w in warnings] == [("web", "mh-port"), ("web", "weights-shifted")]
    text = [str(w) for w in warnings]
    assert text[0].startswith("mhd.yaml:8: warning: service web: scheduler mh without mh-port")
    assert "10.0.0.1:80 1 -> 1, 10.0.0.2:80 100 -> 50" in text[1]


def test_more_servers_than_m_over_100() -> None:
    servers = "\n".join(f"      - 10.0.{i // 250}.{i % 250 + 1}" for i in range(41))
    text = f"services:\n  - name: big\n    address: 203.0.113.1\n    port: 53\n    mh-port: true\n    servers:\n{servers}\n"
    config = loads(text)
    assert [w.code for w in advise(config, 12)] == ["table-balance"]  # 41 > 4093 // 100
    assert advise(config, 13) == []  # 8191 slots balance 81 servers
    forty = loads(text.rsplit("\n", 2)[0] + "\n")
    assert advise(forty, 12) == []


@given(weights=st.lists(st.integers(1, 300), min_size=1, max_size=8), tab_index=st.integers(8, 13))
def test_shifted_weights_is_none_exactly_when_the_kernel_keeps_the_ratios(
    weights: list[int], tab_index: int
) -> None:
    turns = list(
        build_table(
            [MhDest(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)], tab_index=tab_index
        ).turns
    )
    g = reduce(math.gcd, weights)
    reduced = [w // g for w in weights]
    got = shifted_weights(weights, tab_index)
    if got is None:
        assert turns == reduced
    else:
        assert got == turns != reduced
        assert max(reduced) >= 2 ** (tab_index // 2)
