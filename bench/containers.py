"""Containers, measured: apps in an image against the same apps on this machine, side by side.

    python bench/containers.py [IMAGE]     # default localhost/nbpipe-test (scripts/build-test-image.sh)

(a) what a container costs: one bare ``podman run --rm IMAGE true``, and nbpipe's
    check of an image before a run (its digest and a probe of its Python);
(b) a chain of trivial apps, 1 and 21 long, all on this machine and all in the
    image: the first app's cost (the warm container and its zygote start) and
    the marginal cost of each further app;
(c) a fan-out of 4 apps of 1 s each and a merge app, on this machine and in the image.

Timings are measurements, not tests: nothing here passes or fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from run import BUSY, _nbpipe, _notebook, _write, measure  # bench/ is on the path when this script runs

import nbpipe.api

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "localhost/nbpipe-test"


def _tags(name: str, container: bool) -> list[str]:
    return [f"app:{name}"] + ([f"container:{IMAGE}"] if container else [])


def _chain(tmp: Path, length: int, container: bool) -> float:
    cells = [("v0 = 0", _tags("a0", container))]
    cells += [(f"v{i} = v{i - 1} + 1", _tags(f"a{i}", container)) for i in range(1, length)]
    wall, _ = _nbpipe(_write(tmp, f"chain{length}{'c' if container else 'h'}", _notebook(cells)), workers=2)
    return wall


def launch(tmp: Path) -> list[tuple[str, str]]:
    runtime = shutil.which("podman") or "podman"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([runtime, "run", "--rm", IMAGE, "true"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    path = _write(tmp, "check", _notebook([("x = 1", _tags("a", True))]))
    start = time.perf_counter()
    nbpipe.api.check(path)
    checked = time.perf_counter() - start
    return [(f"podman run --rm {IMAGE} true", f"{min(times):.2f} s (best of 3)"),
            ("nbpipe's check of the image (digest + probe)", f"{checked:.2f} s")]


def chain(tmp: Path) -> list[tuple[str, str]]:
    rows = []
    walls = {}
    for container in (False, True):
        walls[container] = (_chain(tmp, 1, container), _chain(tmp, 21, container))
    host, boxed = walls[False], walls[True]
    rows.append(("1 trivial app: host / container", f"{host[0]:.2f} s / {boxed[0]:.2f} s "
                 f"(first container app costs {boxed[0] - host[0]:+.2f} s)"))
    marginal_host, marginal_box = (host[1] - host[0]) / 20, (boxed[1] - boxed[0]) / 20
    rows.append(("each further app in a chain: host / container",
                 f"{marginal_host * 1000:.0f} ms / {marginal_box * 1000:.0f} ms "
                 f"({(marginal_box - marginal_host) * 1000:+.0f} ms in the container)"))
    return rows


def fanout(tmp: Path) -> list[tuple[str, str]]:
    out = {}
    for container in (False, True):
        cells = [(BUSY.format(seconds=1.0) + f"r{i} = _n", _tags(f"work{i}", container)) for i in range(4)]
        cells.append(("print(r0 + r1 + r2 + r3 > 0)", ["app:merge"]))
        out[container], _ = _nbpipe(_write(tmp, f"fan{'c' if container else 'h'}", _notebook(cells)), workers=2)
    return [("fan-out 4 x 1 s + merge: host / container",
             f"{out[False]:.2f} s / {out[True]:.2f} s = {out[True] / out[False]:.2f}x host")]


def main() -> int:
    return measure([launch, chain, fanout])


if __name__ == "__main__":
    sys.exit(main())
