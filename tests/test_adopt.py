"""`adopt: true`: the explicit, per-service permission to take over a service mhd does not own."""

from __future__ import annotations

import pytest

from mhd.config.validate import loads
from mhd.config.yamlsource import ConfigError
from mhd.membership import all_healthy, desired_state

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
