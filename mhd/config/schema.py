"""The JSON Schema of the config file, generated from the validator's own tables (docs/mhd.schema.json).

For editors: etc/mhd.yaml names it in a yaml-language-server modeline, so keys complete and typos
are flagged while typing. The validator stays the authority (it also checks what a schema cannot:
unique names, address families, timeout < interval); the schema only has to accept every config the
validator accepts, and to know every key it knows.

The keys come from the validator's key tables (TOP_KEYS, SERVICE_KEYS, CHECK_KEYS, ...), the
choices from the same constants the validator checks against, the duration syntax and bounds from
`mhd.config.fields`. A key without an entry in VALUES still appears (any value), and a key with a
`<KEY>_KEYS` table in `mhd.config.validate` or `mhd.config.services` becomes a mapping of those
keys, so a new key is in the schema before anyone describes it; tests/test_config_schema.py fails
until docs/mhd.schema.json is regenerated (`python -m mhd.config.schema > docs/mhd.schema.json`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from mhd.config import services, validate
from mhd.config.checks import CHECK_KEYS, QTYPES, RCODES
from mhd.config.checkspec import CHECK_TYPES
from mhd.config.fields import DURATION_BOUNDS, DURATION_RE, OTHER_DURATIONS
from mhd.model import FORWARD_METHODS, PROTOCOLS

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
EMPTY: Schema = {"enum": [None, False, ""]}  # how api.listen and api.socket are switched off


def integer(lo: int, hi: int) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def choice(choices: Iterable[str]) -> Schema:
    """One of `choices`; the validator ignores case, the schema offers the lower and upper forms."""
    return {"enum": sorted({form for c in choices for form in (c.lower(), c.upper())})}


def duration(what: str) -> Schema:
    lo, hi = DURATION_BOUNDS.get(what, OTHER_DURATIONS)
    number = {"type": "number", "minimum": lo, "maximum": hi}
    text = {"type": "string", "pattern": DURATION_RE.pattern}
    return {"anyOf": [number, text], "description": "seconds, or a duration such as 500ms, 2s, 1m"}


def one_or_list(item: Schema) -> Schema:
    return {"anyOf": [item, {"type": "array", "items": item}]}


ENDPOINT = r"^\s*(\[[0-9a-fA-F:.]+\](:\d+)?|[0-9.]+(:\d+)?|[0-9a-fA-F:]+)\s*$"
CHECK_VALUES: dict[str, Schema] = {
    "type": choice(CHECK_TYPES),
    "interval": duration("check.interval"),
    "timeout": duration("check.timeout"),
    "rise": integer(1, 100),
    "fall": integer(1, 100),
    "port": integer(1, 65535),
    "source-address": STRING,
    "initial-state": choice(("up", "down")),
    "method": choice(("get", "head")),
    "path": {"type": "string", "pattern": "^/"},
    "expect-status": one_or_list({"anyOf": [integer(100, 599), {"type": "string", "pattern": r"^\s*\d{3}"}]}),
    "tls-verify": BOOLEAN,
    "query-type": choice(QTYPES),
    "expect-rcode": choice(RCODES),
    "command": {
        "anyOf": [STRING, {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 1}]
    },
} | dict.fromkeys(
    ("host", "body-regex", "sni", "client-cert", "client-key", "payload", "expect", "query-name"), STRING
)
SERVICE_VALUES: dict[str, Schema] = {
    "name": {"type": "string", "pattern": services.NAME_RE.pattern},
    "address": {"type": "string", "description": "the VIP, IPv4 or IPv6"},
    "port": integer(1, 65535),
    "protocol": choice(PROTOCOLS),
    "fwmark": integer(1, 0xFFFFFFFF),
    "family": choice(("ipv4", "ipv6")),
    "scheduler": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,15}$"},
    "mh-port": BOOLEAN,
    "mh-fallback": BOOLEAN,
    "forward": choice(FORWARD_METHODS),
    "check": {"$ref": "#/definitions/check"},
    "min-healthy": {
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"},
        ],
        "description": 'a count (2) or a percentage ("50%")',
    },
    "adopt": BOOLEAN,
    "servers": {"type": ["array", "null"], "items": {"$ref": "#/definitions/server"}},
}
SERVER_VALUES: dict[str, Schema] = {
    "address": STRING,
    "port": integer(0, 65535),
    "weight": integer(1, 65535),
    "forward": SERVICE_VALUES["forward"],
    "check": SERVICE_VALUES["check"],
}
TOP_VALUES: dict[str, Schema] = {
    "services": {"type": ["array", "null"], "items": {"$ref": "#/definitions/service"}},
    "reconcile-interval": duration("reconcile-interval"),
    "state-dir": STRING,
}
NESTED_VALUES: dict[str, dict[str, Schema]] = {
    "api": {
        "listen": {"anyOf": [EMPTY, {"type": "string", "pattern": r":\d+\s*$"}]},
        "socket": {"anyOf": [EMPTY, STRING]},
        "socket-mode": {"type": "string", "pattern": r"^\s*0?[0-7]{3}\s*$", "description": 'quoted: "0660"'},
        "socket-group": STRING,
        "token-file": STRING,
    },
    "kernel": {"module": choice(("auto", "intree", "backport")), "mh-tab-index": integer(8, 17)},
}


def mapping(keys: Iterable[str], values: dict[str, Schema]) -> Schema:
    """An object of exactly `keys`: each with its schema in `values`, else a mapping of its own
    `<KEY>_KEYS` table when the validator has one (the file's keys in `validate`, a service's in
    `services`), else any value."""
    props: dict[str, Schema] = {}
    for key in keys:
        name = key.upper().replace("-", "_") + "_KEYS"
        table = getattr(validate, name, None) or getattr(services, name, None)
        if key in values:
            props[key] = values[key]
        elif isinstance(table, tuple):
            props[key] = mapping(table, NESTED_VALUES.get(key, {}))
        else:
            props[key] = {}
    return {"type": "object", "properties": props, "additionalProperties": False}


def schema() -> Schema:
    """The whole JSON Schema (draft-07: what YAML language servers support best)."""
    service = mapping(services.SERVICE_KEYS, SERVICE_VALUES)
    service["required"] = ["name"]
    server = {
        "anyOf": [{"type": "string", "pattern": ENDPOINT}, mapping(services.SERVER_KEYS, SERVER_VALUES)]
    }
    server["anyOf"][1]["required"] = ["address"]
    defaults = mapping(validate.DEFAULT_KEYS, SERVICE_VALUES)
    top = mapping(validate.TOP_KEYS, TOP_VALUES | {"defaults": {"$ref": "#/definitions/defaults"}})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "mhd configuration (/etc/mhd.yaml)",
        "description": "Generated from mhd's validator (python -m mhd.config.schema); `mhctl check` is the authority.",
        **top,
        "required": ["services"],
        "definitions": {
            "defaults": defaults,
            "service": service,
            "server": server,
            "check": mapping(CHECK_KEYS, CHECK_VALUES),
        },
    }


def main() -> None:
    """`python -m mhd.config.schema`: print the schema (docs/mhd.schema.json is this output)."""
    json.dump(schema(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
