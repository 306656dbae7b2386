"""The OpenAPI 3 document of the API: the contract.

Served at /v1/openapi.json and committed as docs/openapi.json (`python -m mhd.api >
docs/openapi.json`); the tests check every route of `mhd.api.handlers` against it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mhd import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or list(props)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
ERROR = _json("error", "Error")
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": STR, "description": "service name"}
SERVER_PARAM = {
    "name": "server",
    "in": "path",
    "required": True,
    "schema": STR,
    "description": "server as 10.0.0.1:80, 10.0.0.1 (when unique) or [2001:db8::1]:80, URL-encoded",
}


def _schemas() -> dict[str, Any]:
    stats = _obj({k: INT for k in (
        "active_conns", "inactive_conns", "persist_conns", "conns",
        "in_packets", "out_packets", "in_bytes", "out_bytes",
    )})  # fmt: skip
    reload = _obj({"ok": BOOL, "at": NUM, "errors": {"type": "array", "items": STR}, "sha256": STR})
    return {
        "Error": _obj({"error": STR}),
        "Stats": stats,
        "CheckResult": _obj({"at": NUM, "ok": BOOL, "latency": NUM, "detail": STR}),
        "ReloadResult": reload,
        "ReloadFailed": {"allOf": [reload, _obj({"error": STR})]},
        "Server": _obj(
            {
                "name": STR,
                "address": STR,
                "port": INT,
                "weight": INT,
                "check": STR,
                "health": {"type": "string", "enum": ["up", "down", "unknown"]},
                "in_kernel": BOOL,
                "disabled": BOOL,
                "last_check": _nullable(_ref("CheckResult")),
                "successes": INT,
                "failures": INT,
                "transitions": INT,
                "kernel_weight": _nullable(INT),
                "stats": _nullable(_ref("Stats")),
            }
        ),
        "Service": _obj(
            {
                "name": STR,
                "virtual": STR,
                "address": _nullable(STR),
                "port": INT,
                "fwmark": INT,
                "family": {"type": "string", "enum": ["ipv4", "ipv6"]},
                "protocol": _nullable(STR),
                "scheduler": STR,
                "flags": {"type": "array", "items": STR},
                "state": {
                    "type": "string",
                    "enum": ["ok", "degraded", "panic", "down"],
                    "description": "down: no server in IPVS; panic: min-healthy keeps unhealthy servers; "
                    "degraded: an enabled server is not up or not in IPVS; ok: all enabled servers serve",
                },
                "panic": BOOL,
                "min_healthy": STR,
                "in_kernel": BOOL,
                "servers_total": INT,
                "servers_up": INT,
                "servers_in_kernel": INT,
                "stats": _nullable(_ref("Stats")),
                "table_digest": {
                    **_nullable(STR),
                    "description": "mh services in IPVS: digest of the table the kernel builds from the "
                    "live list; equal digests on two directors mean they send every client to the same server",
                },
                "servers": {"type": "array", "items": _ref("Server")},
            }
        ),
        "Daemon": _obj(
            {
                "version": STR,
                "pid": INT,
                "config": _obj({"path": STR, "sha256": _nullable(STR), "loaded_at": _nullable(NUM)}),
                "last_reload": _nullable(_ref("ReloadResult")),
                "kernel": _nullable({"type": "object", "description": "ip_vs_mh variant, MH table size"}),
                "reconciles": INT,
                "transitions": INT,
                "summary": STR,
            }
        ),
        "Status": _obj(
            {
                "daemon": _ref("Daemon"),
                "services": {"type": "array", "items": _ref("Service")},
                "fleet": _ref("Fleet"),
            }
        ),
        "Fleet": _obj(
            {
                "drained": BOOL,
                "withdrawn": {**BOOL, "description": "no route announced and no failed route write"},
                "announce": _nullable(
                    _obj(
                        {
                            "table": INT,
                            "protocol": INT,
                            "vip_interface": _nullable(STR),
                            "hold_down": NUM,
                            "panic": {"type": "string", "enum": ["announce", "withdraw"]},
                        }
                    )
                ),
                "vips": {
                    "type": "array",
                    "items": _obj({"vip": STR, "announced": BOOL, "reason": STR, "since": _nullable(NUM)}),
                },
                "route_writes": INT,
                "failures": {"type": "array", "items": STR},
                "foreign": {
                    "type": "array",
                    "items": STR,
                    "description": "VIPs on the interface not added by mhd",
                },
                "sysctl": {
                    "type": "array",
                    "items": _obj(
                        {
                            "name": STR,
                            "desired": INT,
                            "current": _nullable(INT),
                            "drift": BOOL,
                            "error": _nullable(STR),
                        }
                    ),
                },
                "sysctl_repairs": INT,
            }
        ),
        "DirectorDrain": _obj({"drained": BOOL, "withdrawn": BOOL}),
        "Tables": _obj(
            {
                "services": {
                    "type": "object",
                    "description": "service name -> its table's digest and inputs (mhctl compare)",
                    "additionalProperties": {"type": "object"},
                }
            }
        ),
        "Health": _obj({"ok": BOOL, "last_reconcile_age": NUM, "limit": NUM}, ["ok"]),
        "Drain": _obj({"service": STR, "server": STR, "disabled": BOOL}),
        "Table": _obj(
            {
                "service": STR,
                "table_size": INT,
                "variant": STR,
                "servers": {"type": "array", "items": _obj({"server": STR, "weight": INT, "share": NUM})},
                "max_mean_ratio": NUM,
            }
        ),
        "Predictions": {"type": "array", "items": _obj({"client": STR, "server": _nullable(STR)})},
    }


def _drain(verb: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{verb} a server (persisted in the state dir; applied by the next pass, at once)",
            "operationId": f"{verb}Server",
            "parameters": [NAME_PARAM, SERVER_PARAM],
            "security": [{}, {"bearer": []}],
            "responses": {
                "200": _json(f"{verb}d", "Drain"),
                "401": ERROR,
                "403": ERROR,
                "404": _json("no such service or server", "Error"),
                "413": ERROR,
            },
        }
    }


def _director(verb: str, what: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{verb} this director: {what} (persisted in the state dir)",
            "operationId": f"{verb}Director",
            "security": [{}, {"bearer": []}],
            "responses": {
                "200": _json(f"{verb}ed", "DirectorDrain"),
                "401": ERROR,
                "403": ERROR,
                "409": _json("the daemon is starting", "Error"),
                "413": ERROR,
            },
        }
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 description of every route, with the errors any request can get: 400 for an
    unparsable request (its line, headers or size) and, where a body is read, 408 for a body that
    does not arrive in time."""
    doc = _routes()
    for path in doc["paths"].values():
        for method, operation in path.items():
            responses = operation["responses"]
            responses.setdefault("400", _json("malformed request", "Error"))
            if method == "post":
                responses.setdefault("408", _json("request body not received in time", "Error"))
    return doc


def _routes() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mhd",
            "version": __version__,
            "description": "IPVS/Maglev control-plane daemon. POST requests are allowed on the unix "
            "socket; over TCP they need 'Authorization: Bearer <token>' (api.token-file).",
        },
        "paths": {
            "/v1/status": {
                "get": {
                    "summary": "the daemon, every service and every server",
                    "operationId": "getStatus",
                    "responses": {"200": _json("status", "Status")},
                }
            },
            "/v1/services/{name}": {
                "get": {
                    "summary": "one service",
                    "operationId": "getService",
                    "parameters": [NAME_PARAM],
                    "responses": {"200": _json("the service", "Service"), "404": ERROR},
                }
            },
            "/v1/services/{name}/table": {
                "get": {
                    "summary": "each server's share of the live Maglev table (bit-exact with ip_vs_mh)",
                    "operationId": "getTable",
                    "parameters": [NAME_PARAM],
                    "responses": {"200": _json("the table", "Table"), "400": ERROR, "404": ERROR},
                }
            },
            "/v1/services/{name}/predict": {
                "get": {
                    "summary": "which real server each client goes to now",
                    "operationId": "predict",
                    "parameters": [
                        NAME_PARAM,
                        {
                            "name": "client",
                            "in": "query",
                            "required": True,
                            "description": "ADDR or ADDR:PORT ([v6]:PORT); repeat for more (up to 10,000)",
                            "schema": {"type": "array", "items": STR, "minItems": 1, "maxItems": 10000},
                            "style": "form",
                            "explode": True,
                        },
                    ],
                    "responses": {
                        "200": _json("one entry per client", "Predictions"),
                        "400": ERROR,
                        "404": ERROR,
                    },
                }
            },
            "/v1/reload": {
                "post": {
                    "summary": "re-read the config file and wait for the result",
                    "operationId": "reload",
                    "security": [{}, {"bearer": []}],
                    "responses": {
                        "200": _json("reloaded", "ReloadResult"),
                        "401": ERROR,
                        "403": ERROR,
                        "413": ERROR,
                        "422": _json("the file is invalid; the running config is kept", "ReloadFailed"),
                        "504": ERROR,
                    },
                }
            },
            "/v1/drain": _director("drain", "withdraw every route of this director; IPVS keeps serving"),
            "/v1/undrain": _director("undrain", "announce again what health allows, without hold-down"),
            "/v1/tables": {
                "get": {
                    "summary": "each live mh service's table digest and inputs (mhctl compare)",
                    "operationId": "getTables",
                    "responses": {"200": _json("the tables", "Tables")},
                }
            },
            "/v1/services/{name}/servers/{server}/disable": _drain("disable"),
            "/v1/services/{name}/servers/{server}/enable": _drain("enable"),
            "/v1/openapi.json": {
                "get": {
                    "summary": "this document",
                    "operationId": "getOpenapi",
                    "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {}}}},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 while reconcile passes complete, 503 when none did recently",
                    "operationId": "getHealthz",
                    "responses": {"200": _json("healthy", "Health"), "503": _json("stale", "Health")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "getMetrics",
                    "responses": {
                        "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def main() -> None:
    """`python -m mhd.api`: print the OpenAPI document (docs/openapi.json is this output)."""
    json.dump(openapi(), sys.stdout, indent=1)
    sys.stdout.write("\n")
