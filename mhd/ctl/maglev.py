"""`mhctl predict` and `mhctl table`: Maglev answers from the config or from the live kernel.

With `--config FILE` the service is the one mhd would build from that file (every server healthy,
canonical order); without it, the kernel's service as it is now (destination order as dumped), so
the answer holds for this director at this moment.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys

from mhd import kernel
from mhd.config.records import Config
from mhd.config.reload import ConfigReloader
from mhd.config.validate import find_config, load
from mhd.ctl.exits import UsageError
from mhd.maglev import params
from mhd.maglev.params import Model, kept_weights
from mhd.model import PROTOCOLS, DestKey, Service, ServiceKey, mh_table_size, parse_ip

KEY_RE = re.compile(r"^(tcp|udp|sctp):(.+):(\d+)$|^fwmark:(\d+)(?:/(ipv4|ipv6))?$")


def load_config(path: str) -> Config:
    """The config at `path`, validated against this kernel's Maglev table size, as the daemon
    loads it (`ConfigReloader`: a big file's services a group at a time, the same result and
    errors as `load`)."""
    return ConfigReloader(mh_table_size(kernel.mh_tab_index()[0])).load(path)


def model_for(config: Config | None) -> Model:
    """Table size and variant: the config's overrides, else what the running kernel says."""
    index = (config.kernel.mh_tab_index if config else None) or kernel.mh_tab_index()[0]
    return params.model_for(config.kernel.module if config else "auto", kernel.mh_variant(), index)


def _parse_key(text: str) -> ServiceKey | None:
    m = KEY_RE.match(text)
    if not m:
        return None
    if m.group(4):
        family = socket_family(6 if m.group(5) == "ipv6" else 4)
        return ServiceKey(family, fwmark=int(m.group(4)))
    address = parse_ip(m.group(2).strip("[]"))
    return ServiceKey(
        socket_family(address.version), protocol=PROTOCOLS[m.group(1)], address=address, port=int(m.group(3))
    )


def socket_family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


async def resolve(args: argparse.Namespace) -> tuple[Service, Model, str, dict[DestKey, int]]:
    """The service to answer for, the model, a label, and the slots its weight-0 (quiesced)
    servers keep (`mhd.maglev.predict.kept_weights`: from the config)."""
    from mhd.ipvs import IpvsClient
    from mhd.planner import canonical

    if args.config:
        config = load_config(args.config)
        svc = config.by_name(args.service)
        if svc is None:
            key = _parse_key(args.service)
            svc = next((s for s in config.services if s.key == key), None)
        if svc is None:
            raise UsageError(
                f"no service '{args.service}' in {args.config} (names: {', '.join(s.name for s in config.services)})"
            )
        built = svc.service()
        return (
            Service(built.key, built.scheduler, built.flags, dests=canonical(built.dests)),
            model_for(config),
            svc.name,
            {},
        )
    key = _parse_key(args.service)
    name = args.service
    config_obj: Config | None = None
    if key is None:
        path = find_config(None)
        try:
            config_obj = load(path)
        except Exception as exc:  # the name needs the config; say which file and why
            raise UsageError(
                f"'{args.service}' is not a service key (udp:ADDR:PORT) and {path} cannot be read to look the name up: {exc}"
            ) from None
        found = config_obj.by_name(args.service)
        if found is None:
            raise UsageError(f"no service named '{args.service}' in {path}")
        key = found.key
    client = await IpvsClient.open()
    try:
        svc_live = await client.service(key)
    finally:
        client.close()
    if svc_live is None:
        raise UsageError(f"the kernel has no service {key} in this network namespace")
    if config_obj is None and any(d.weight == 0 for d in svc_live.dests):
        config_obj = _quiet_load(find_config(None))  # quiesced servers: their slots are the config's
    configured = next((s for s in config_obj.services if s.key == key), None) if config_obj else None
    return svc_live, model_for(config_obj), name, kept_weights(configured)


def _quiet_load(path: str) -> Config | None:
    try:
        return load(path)
    except Exception:  # no readable config: weight-0 servers are modelled as added at weight 0
        return None


async def cmd_predict(args: argparse.Namespace) -> None:
    from mhd.maglev.predict import parse_client, predict

    lines = args.clients or [line for line in sys.stdin.read().split() if line]
    try:
        clients = [parse_client(c) for c in lines]
    except ValueError as exc:
        raise UsageError(f"bad client: {exc}") from None
    svc, model, _, kept = await resolve(args)
    try:
        picks = predict(svc, clients, model, kept)
    except ValueError as exc:  # e.g. an IPv6 client for an IPv4 service
        raise UsageError(f"bad client for {svc.key}: {exc}") from None
    if args.json:
        print(
            json.dumps(
                [{"client": c, "server": str(p) if p else None} for c, p in zip(lines, picks, strict=True)]
            )
        )
    else:
        for c, p in zip(lines, picks, strict=True):
            print(f"{c} {p if p else '-'}")


async def cmd_table(args: argparse.Namespace) -> None:
    from mhd.maglev.predict import shares, table

    svc, model, name, kept = await resolve(args)
    if svc.scheduler != "mh":
        raise UsageError(f"service {name} uses scheduler {svc.scheduler}, not mh: it has no Maglev table")
    share = shares(svc, model, kept)
    ratio = table(svc, model, kept).max_mean_ratio()  # slots against each server's weighted fair share
    if args.json:
        print(json.dumps({"service": name, "table_size": model.size, "variant": model.variant,
                          "servers": [{"server": str(k), "share": v} for k, v in share.items()],
                          "max_mean_ratio": ratio}))  # fmt: skip
        return
    order = "canonical order, every server up" if args.config else "list order as in the kernel now"
    print(f"{name} {svc.key}: {model.size} slots ({model.variant} ip_vs_mh), {order}")
    for k, v in share.items():
        weight = next(d.weight for d in svc.dests if d.key == k)
        print(f"  {k!s:<40} weight {weight:<5} {v:7.2%}")
    print(f"max/mean (against each server's weighted fair share): {ratio:.3f}")
