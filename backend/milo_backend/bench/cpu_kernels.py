"""The compiled CPU kernels end to end (`milo-backend bench cpu-kernels`, section "cpu-kernels").

The fox run of `bench mesh-loop` (posed photos, 240 px, 1,500 iterations, mesh in the loop) twice, one
after the other on the same machine: with the torch code (`MILO_CPU_KERNELS=torch`) and with the compiled
CPU kernels. Each run is a fresh process, so neither inherits the other's warm caches; the ratio of their
wall-clock seconds is the figure, beside the quality each reached.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from milo_backend.bench import markdown_table, section_header
from milo_backend.bench.mesh_loop import FOX
from milo_backend import cpu_kernels

KINDS = ("torch", "compiled")


def _child(fox: str, workdir: str) -> None:
    from milo_backend.bench.mesh_loop import fox_row
    print(json.dumps(fox_row("cpu", fox=Path(fox), workdir=workdir)))


def run_fox(kind: str, fox: Path, workdir: Path) -> dict:
    env = dict(os.environ)
    env.pop(cpu_kernels.ENV, None)
    if kind == "torch":
        env[cpu_kernels.ENV] = "torch"
    code = f"from milo_backend.bench.cpu_kernels import _child; _child({str(fox)!r}, {str(workdir)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_cpu_kernels(fox: Path = FOX) -> str:
    kernels = cpu_kernels.state()
    if kernels.active != "compiled":
        raise RuntimeError(f"the compiled CPU kernels are not available here: {kernels.why}")
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cpu_kernels_") as work:
        for kind in KINDS:
            row = run_fox(kind, fox, Path(work) / kind)
            row.pop("picture", None)
            rows.append({"CPU kernels": kind, **row})
    rows[1]["speed-up"] = rows[0]["photos to mesh s"] / rows[1]["photos to mesh s"]
    rows[0]["speed-up"] = 1.0
    md = section_header("The compiled CPU kernels, end to end", "milo-backend bench cpu-kernels --device cpu", "cpu")
    md += ("The fox run of `bench mesh-loop` (posed photos, longest side 240 px, preset verylowres, 1,500 "
           "iterations, mesh in the loop, 7 of 50 photos held out) with the torch code and with the compiled "
           "kernels (compositor, mesh z-buffer, marching tetrahedra's connectivity), one after the "
           "other, each in a fresh process with 2 threads. Speed-up: the ratio of the photos-to-mesh seconds. "
           f"1-min load average before: {load_before[0]:.1f}; after: {os.getloadavg()[0]:.1f}.\n\n")
    md += markdown_table(rows)
    return md


if __name__ == "__main__":
    from milo_backend.bench import write_section
    text = bench_cpu_kernels(Path(sys.argv[1]) if len(sys.argv) > 1 else FOX)
    print(text)
    write_section("cpu-kernels", text, Path(__file__).resolve().parents[3] / "BENCHMARKS.md")
