"""What the fairseq autoload ``.pth`` adds to an unrelated Python start: ``python -m bench.startup``.

Two measurements over ``--runs`` fresh interpreters running ``import json``, best and median (on a shared
machine the best run is the estimate of the cost itself; the median carries the load):

* ``-X importtime``: the cumulative import time of ``beit3_plugins`` and ``beit3_plugins.autoload``,
  the only modules the ``.pth`` line imports (its ``install()`` then appends one finder);
* wall time of the whole start with the autoload on and with ``BEIT3_AUTOLOAD=0`` (the ``.pth`` still
  imports the module, which then returns), interleaved; the difference is the finder's cost on every later
  import, which is lost in the noise of process start-up.

It also checks that neither run imported torch or fairseq. Target (docs/pretraining.md): under 5 ms.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List

MODULES = ("beit3_plugins", "beit3_plugins.autoload")
PROBE = ("import json, sys\n"
         "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'fairseq')]\n")


def importtime_us(env: Dict[str, str]) -> float:
    """Cumulative microseconds of :data:`MODULES` in one ``-X importtime`` start."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", line)
        if match and match.group(3) in MODULES:
            rows.append((len(match.group(2)), float(match.group(1))))
    if not rows:
        raise RuntimeError("beit3_plugins was not imported at start-up: is the .pth installed?\n" + err[-2000:])
    outer = min(depth for depth, _ in rows)  # the outermost import's cumulative time covers the inner one
    total = sum(us for depth, us in rows if depth == outer)
    return total


def wall_ms(env: Dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PROBE], env=env, check=True)
    return (time.perf_counter() - start) * 1e3


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    on = {**os.environ, "BEIT3_AUTOLOAD": "1"}
    off = {**os.environ, "BEIT3_AUTOLOAD": "0"}
    imports = [importtime_us(on) / 1e3 for _ in range(args.runs)]
    walls_on, walls_off = [], []
    for _ in range(args.runs):
        walls_on.append(wall_ms(on))
        walls_off.append(wall_ms(off))
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.runs} runs each\n\n"
          f"| measure | best | median |\n|---|---|---|\n"
          f"| import of {' + '.join(MODULES)} (-X importtime, cumulative) | {min(imports):.2f} ms | "
          f"{statistics.median(imports):.2f} ms |\n"
          f"| `python -c 'import json'` with the autoload | {min(walls_on):.1f} ms | "
          f"{statistics.median(walls_on):.1f} ms |\n"
          f"| the same with BEIT3_AUTOLOAD=0 | {min(walls_off):.1f} ms | {statistics.median(walls_off):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
