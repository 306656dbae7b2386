"""docs/mhd.schema.json: generated from the validator, committed, and accepting every config it accepts."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mhd.config import services, validate
from mhd.config.schema import schema
from mhd.config.validate import loads
from mhd.config.yamlsource import ConfigError, parse, plain

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "mhd.schema.json"
INSTALLED = "/usr/share/mhd/mhd.schema.json"  # debian/mhd.install puts it there


def checker() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema())


def instance(text: str) -> Any:
    """A config as the validator reads it (YAML 1.1 values, no positions)."""
    return plain(parse(text, "<sample>"))


def samples() -> dict[str, str]:
    """The shipped configs, and every module-level string of the tests that the validator accepts."""
    found = {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for p in (ROOT / "etc/mhd.yaml", ROOT / "debian/conf/mhd.yaml")
    }
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                text = node.value.value
                try:
                    loads(text)
                except (ConfigError, ValueError):
                    continue
                found[f"{path.name}:{node.lineno}"] = text
    return found


SAMPLES = samples()


def test_the_committed_schema_is_the_generated_one() -> None:
    assert json.loads(COMMITTED.read_text()) == schema(), (
        "regenerate: python -m mhd.config.schema > docs/mhd.schema.json"
    )
    jsonschema.Draft7Validator.check_schema(schema())


def test_the_configs_name_the_schema_for_editors() -> None:
    first = (ROOT / "etc/mhd.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/mhd.schema.json"
    assert (ROOT / "etc" / first.split("=", 1)[1]).resolve() == COMMITTED
    installed = (ROOT / "debian/conf/mhd.yaml").read_text().splitlines()[0]
    assert installed == f"# yaml-language-server: $schema={INSTALLED}"
    assert (
        f"docs/mhd.schema.json {Path(INSTALLED).parent.relative_to('/')}/"
        in (ROOT / "debian/mhd.install").read_text()
    )


def test_enough_samples_are_found() -> None:
    assert len(SAMPLES) >= 8, sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_valid_sample_validates(name: str) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in checker().iter_errors(instance(SAMPLES[name]))
    ]
    assert not errors, errors


BASE = "services:\n  - {name: web, address: 10.0.0.1, port: 80, servers: ['10.0.0.2:80']}\n"


@pytest.mark.parametrize(
    "text",
    [
        BASE + "reconcile-intervall: 2s\n",  # unknown top-level key
        BASE.replace("port: 80,", "port: 80, sheduler: mh,"),
        BASE.replace("port: 80,", "port: 80, protocol: icmp,"),
        BASE.replace("port: 80,", "port: 70000,"),
        BASE.replace("name: web", "name: Web!"),
        BASE + "defaults: {check: {type: tcp, intervall: 2s}}\n",
        BASE + "defaults: {check: {type: tcp, interval: 2 seconds}}\n",
        BASE + "kernel: {mh-tab-index: 20}\n",
        BASE + "api: {socket-mode: 0660}\n",  # unquoted: YAML octal, an integer
        BASE.replace("['10.0.0.2:80']", "[{address: 10.0.0.2, weight: 0}]"),
        "services: {web: {}}\n",
    ],
)
def test_what_the_validator_rejects_for_a_key_or_a_type_the_schema_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        loads(text)
    assert list(checker().iter_errors(instance(text)))


def test_a_new_key_table_appears_without_describing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key added to a validator table is in the schema at once; with a `<KEY>_KEYS` table of its
    own it is a mapping of those keys."""
    monkeypatch.setattr(validate, "TOP_KEYS", (*validate.TOP_KEYS, "announce"), raising=True)
    monkeypatch.setattr(validate, "ANNOUNCE_KEYS", ("table", "hold-down"), raising=False)
    monkeypatch.setattr(services, "SERVICE_KEYS", (*services.SERVICE_KEYS, "announce"), raising=True)
    doc = schema()
    assert set(doc["properties"]["announce"]["properties"]) == {"table", "hold-down"}
    assert "announce" in doc["definitions"]["service"]["properties"]
    assert set(doc["properties"]) == set(validate.TOP_KEYS)
    assert set(doc["definitions"]["defaults"]["properties"]) == set(validate.DEFAULT_KEYS)
