"""`mhctl compare`: do several directors build the same Maglev tables?

Each target (a daemon's unix socket or API URL) publishes, per live mh service, the digest and the
inputs of the table its kernel builds (`GET /v1/tables`, `mhd.maglev.digest.table_json`). Equal
digests: every client goes to the same server whichever director ECMP picks. Otherwise, for each
pair, the share of flows the two tables send to different servers: the connections that break when
the routers move them between the two (`mhd.maglev.digest.differing_share`).
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from mhd.config.records import DEFAULT_SOCKET
from mhd.ctl.client import Client, ClientError, error_of
from mhd.ctl.exits import EXIT_FAIL


def fetch(target: str) -> dict[str, Any]:
    """The tables of one director: service name -> table document."""
    client = (
        Client(target) if not target.startswith(("http://", "https://")) else Client(DEFAULT_SOCKET, target)
    )
    code, doc = client.request("GET", "/v1/tables")
    if code != 200 or not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ClientError(f"{target}: {error_of(code, doc)}")
    return dict(doc["services"])


def compare(tables: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per service (by name, across every target): whether the digests match, and per pair of
    targets that disagree the share of flows that differ (None: not comparable, or missing)."""
    from mhd.maglev.digest import differing_share, from_table_json  # numpy: only for this command

    names = sorted({name for docs in tables.values() for name in docs})
    out = []
    for name in names:
        digests = {t: docs[name]["digest"] if name in docs else None for t, docs in tables.items()}
        pairs = []
        for a, b in itertools.combinations(tables, 2):
            if digests[a] == digests[b] and digests[a] is not None:
                continue
            share = None
            if digests[a] is not None and digests[b] is not None:
                try:
                    (sa, ma), (sb, mb) = from_table_json(tables[a][name]), from_table_json(tables[b][name])
                    share = differing_share(sa, sb, ma, mb)
                except (KeyError, TypeError, ValueError):
                    share = None
            pairs.append({"a": a, "b": b, "differing_share": share})
        out.append({"service": name, "match": not pairs, "digests": digests, "pairs": pairs})
    return out


def cmd_compare(args: argparse.Namespace) -> int | None:
    tables = {t: fetch(t) for t in args.targets}
    result = compare(tables)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for row in result:
            if row["match"]:
                digest = next(iter(row["digests"].values()))
                print(f"{row['service']}: match ({digest} on all {len(tables)})")
                continue
            print(f"{row['service']}: DIFFER")
            for t, d in row["digests"].items():
                print(f"  {t}: {d or 'not a live mh service there'}")
            for p in row["pairs"]:
                share = p["differing_share"]
                what = f"{share:.2%} of flows differ" if share is not None else "not comparable"
                print(f"  {p['a']} vs {p['b']}: {what}")
    return EXIT_FAIL if any(not r["match"] for r in result) else None
