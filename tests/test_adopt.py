"""`adopt: true`: the explicit, per-service permission to take over a service mhd does not own."""

from __future__ import annotations

import logging

import pytest

from mhd.config.validate import loads
from mhd.config.yamlsource import ConfigError
from mhd.membership import all_healthy, desired_state
from mhd.model import ServiceKey
from mhd.reconcile import Outcome, log_refusals

SERVICE = "services: [{name: web, address: 10.9.0.1, port: 80, servers: [10.0.0.1]%s}]"


def test_adopt_is_off_unless_a_service_says_true() -> None:
    assert not loads(SERVICE % "").services[0].adopt
    assert not loads(SERVICE % ", adopt: false").services[0].adopt
    config = loads(SERVICE % ", adopt: true")
    desired, _ = desired_state(config, all_healthy, {})
    assert config.services[0].adopt and [d.adopt for d in desired.values()] == [True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SERVICE % ", adopt: yes-please", "adopt must be"),
        ("defaults: {adopt: true}\n" + SERVICE % "", "known keys"),  # per service only, never wholesale
    ],
)
def test_adopt_must_be_a_boolean_on_the_service_itself(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert message in str(err.value.problems[0])


def test_a_refusal_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = loads(SERVICE % "")
    key = config.services[0].key

    def passes(refused: list[list[ServiceKey]], only: set[ServiceKey] | None = None) -> set[ServiceKey]:
        seen: set[ServiceKey] = set()
        for now in refused:
            seen = log_refusals(seen, Outcome({}, [], [], [], refused=now), config, only)
        return seen

    with caplog.at_level(logging.INFO, logger="mhd.reconcile"):
        assert passes([[key], [key], [key]]) == {key}  # a whole pass every reconcile-interval
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "service web tcp:10.9.0.1:80" in caplog.text and "adopt: true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mhd.reconcile"):
        assert passes([[key], [], []], only={key}) == set()  # e.g. adopted by a scoped pass
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    # A scoped pass over other services says nothing about this one.
    assert log_refusals({key}, Outcome({}, [], [], []), config, only=set()) == {key}
