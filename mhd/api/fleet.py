"""The fleet part of the API: drain and undrain this director, the fleet section of the status, and
the tables `mhctl compare` compares across directors.

It reads the daemon's fleet step (`mhd.announcer`) through `mhd.api.view.FleetView` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mhd.api.responses import ApiError, json_response
from mhd.api.view import DaemonView, FleetView
from mhd.sysctl_policy import PREFIX

log = logging.getLogger("mhd.api")


def fleet_status(daemon: DaemonView) -> dict[str, Any]:
    """The `fleet` section of `GET /v1/status`."""
    fleet = daemon.fleet
    announce = daemon.config.announce if daemon.config is not None else None
    if fleet is None:
        return {"drained": False, "withdrawn": True, "announce": None, "vips": [], "route_writes": 0,
                "failures": [], "foreign": [], "sysctl": [], "sysctl_repairs": 0}  # fmt: skip
    reasons = fleet.decision.reasons if fleet.decision is not None else {}
    vips = [
        {
            "vip": str(vip),
            "announced": r.announced,
            "reason": reasons.get(vip, ""),
            "since": r.changed or None,
        }
        for vip, r in sorted(fleet.records.items(), key=lambda kv: (kv[0].version, int(kv[0])))
    ]
    return {
        "drained": fleet.drained,
        "withdrawn": fleet.withdrawn(),
        "announce": (
            {
                "table": announce.table,
                "protocol": announce.protocol,
                "vip_interface": announce.vip_interface,
                "hold_down": announce.hold_down,
                "panic": "announce" if announce.announce_panic else "withdraw",
            }
            if announce is not None
            else None
        ),
        "vips": vips,
        "route_writes": fleet.route_writes,
        "failures": list(fleet.failures),
        "foreign": list(fleet.foreign),
        "sysctl": sysctl_rows(fleet),
        "sysctl_repairs": fleet.sysctls.repairs,
    }


def sysctl_rows(fleet: FleetView) -> list[dict[str, Any]]:
    s = fleet.sysctls
    return [
        {
            "name": PREFIX + name,
            "desired": value,
            "current": s.current.get(name),
            "drift": s.current.get(name) != value,
            "error": s.failures.get(PREFIX + name),
        }
        for name, value in sorted(s.desired.items())
    ]


def table_digest(daemon: DaemonView, service: str) -> str | None:
    """The digest of the table the kernel builds for `service` now (None: not a live mh service)."""
    doc = daemon.fleet.tables.get(service) if daemon.fleet is not None else None
    return str(doc["digest"]) if doc is not None else None


class FleetRoutes:
    """`POST /v1/drain`, `POST /v1/undrain` and `GET /v1/tables` of one listener."""

    def __init__(
        self, daemon: DaemonView, authorize: Callable[[web.Request], None], peer: Callable[[web.Request], str]
    ) -> None:
        self.daemon = daemon
        self.authorize = authorize
        self.peer = peer

    def add(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/drain", self.post_drain)
        router.add_post("/v1/undrain", self.post_undrain)
        router.add_get("/v1/tables", self.get_tables)

    async def post_drain(self, request: web.Request) -> web.StreamResponse:
        return self._drain(request, True)

    async def post_undrain(self, request: web.Request) -> web.StreamResponse:
        return self._drain(request, False)

    def _drain(self, request: web.Request, drained: bool) -> web.StreamResponse:
        self.authorize(request)
        try:
            self.daemon.set_drained(drained)
        except LookupError as exc:
            raise ApiError(409, str(exc)) from None
        log.info(
            "director %s through the API by %s", "drained" if drained else "undrained", self.peer(request)
        )
        fleet = self.daemon.fleet
        return json_response({"drained": drained, "withdrawn": fleet.withdrawn() if fleet else True})

    async def get_tables(self, request: web.Request) -> web.StreamResponse:
        """Per live mh service, its digest and the inputs of its table (`mhd.maglev.digest.table_json`)."""
        fleet = self.daemon.fleet
        return json_response({"services": dict(fleet.tables) if fleet is not None else {}})
