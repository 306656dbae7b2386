"""The config load's CPU time and peak memory at 1,700 to 106,250 objects, on the host: the daemon's
loader (`ConfigReloader`: the services list a group at a time when that is safe) against the whole-tree
load (`mhd.config.validate.load`, the reference that gives the authoritative errors), each in a
fresh process so that its peak RSS (VmHWM) is its own, alternately, median of the rounds.

    .venv/bin/python bench/bench_load.py                       # 100x16, 1000x16, 6250x16, 1000x100
    .venv/bin/python bench/bench_load.py --shapes 6250x16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench")]

from bench_apply import config  # noqa: E402

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import mhd.daemon  # the daemon's imports: the baseline both loaders start from
from mhd.config.reload import ConfigReloader
from mhd.config.validate import load
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
base = hwm()
t = time.process_time()
config = ConfigReloader().load(sys.argv[2]) if sys.argv[1] == "daemon" else load(sys.argv[2])
print(json.dumps({"cpu": time.process_time() - t, "peak": hwm(), "base": base, "servers": config.server_count}))
"""


def one(kind: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(REPO)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return dict(json.loads(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="100x16,1000x16,6250x16,1000x100")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print("objects | whole-tree load: CPU, peak RSS | daemon's loader: CPU, peak RSS | ratios (daemon / whole)")
    for shape in args.shapes.split(","):
        n, per = (int(x) for x in shape.split("x"))
        path = Path(tempfile.mkdtemp(prefix="mhd-bench-load-")) / "mhd.yaml"
        path.write_text(config(n, per))
        runs: dict[str, list[dict[str, float]]] = {"whole": [], "daemon": []}
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(one(kind, path))
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("cpu", "peak", "base")} for k, v in runs.items()}
        w, d = med["whole"], med["daemon"]
        objects = n + n * per
        print(f"{objects:>7,} ({shape}) | {w['cpu']:.2f} s, {w['peak']:.0f} MB | {d['cpu']:.2f} s, {d['peak']:.0f} MB"
              f" | CPU {d['cpu'] / w['cpu']:.2f}x, peak above the imports ({d['base']:.0f} MB)"
              f" {(d['peak'] - d['base']) / (w['peak'] - w['base']):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
