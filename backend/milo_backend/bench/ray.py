"""Remote runs and batches on a Ray head of this computer (loopback): what Ray adds to a job (sending the
photos, scheduling, streaming the events, mirroring the outputs) and a batch's throughput on these cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from milo_backend.bench import markdown_table, section_header
from milo_backend.data.synthetic import make_synthetic_scene
from milo_backend.errors import MiloError
from milo_backend.remote.head import local_head


def _timed(*args) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "milo_backend", *map(str, args), "--json"], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise MiloError(f"benchmark command failed ({proc.returncode}): {' '.join(map(str, args))}",
                        hint=proc.stdout[-1000:] + proc.stderr[-1000:])
    return seconds


def _backend_seconds(run: Path) -> float:
    """The backend's own time, first to last event of its log: what is left of a run's wall time is the
    cost of starting Python, connecting, sending and mirroring."""
    times = [json.loads(line)["time"] for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return times[-1] - times[0]


def bench_ray(iterations: int = 2000, batch_scenes: int = 4, batch_iterations: int = 500) -> str:
    """One job of the demo's size (the sample's 32 views of 128 px, `iterations`), local then on the head:
    the wall clocks, and the time Ray added (each wall clock less the backend's own time); then `batch_scenes` small scenes at 1 CPU per scene and at all CPUs per scene."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="milo-bench-ray") as tmp:
        tmp = Path(tmp)
        # known poses: structure from motion on two cores is not deterministic, and a different model trains
        # for a different time (one pair once differed by 18% that way)
        dataset = make_synthetic_scene(tmp / "sample", n_views=32, size=128)
        scenes = [make_synthetic_scene(tmp / f"scene {i}", n_views=16, size=64) for i in range(batch_scenes)]
        with local_head(num_cpus=cores) as address:
            load = os.getloadavg()[0]
            local = _timed("train", dataset, tmp / "local", "--iterations", iterations, "--eval")
            remote = _timed("train", dataset, tmp / "remote", "--iterations", iterations, "--eval", "--ray", address)
            added = (remote - _backend_seconds(tmp / "remote")) - (local - _backend_seconds(tmp / "local"))
            rows = [{"job": f"train the sample (32 views, 128 px, known poses, {iterations} iterations)",
                     "local s": local, "on Ray s": remote, "wall-clock overhead %": 100 * (remote - local) / local,
                     "added by Ray s": added, "added %": 100 * added / local, "load avg": f"{load:.1f}"}]
            batch = []
            for cpus in (1, cores):
                load = os.getloadavg()[0]
                seconds = _timed("batch", *scenes, "--out", tmp / f"batch {cpus}", "--iterations", batch_iterations,
                                 "--ray", address, "--ray-cpus", cpus)
                batch.append({"batch": f"{batch_scenes} scenes (16 views, 64 px, {batch_iterations} iterations)",
                              "CPUs per scene": cpus, "scenes at once": max(1, cores // cpus), "seconds": seconds,
                              "scenes per hour": 3600 * batch_scenes / seconds, "load avg": f"{load:.1f}"})
    cmd = "milo-backend bench ray"
    return (section_header("Remote runs on Ray (a head on this computer, loopback)", cmd, "cpu")
            + markdown_table(rows) + "\n" + markdown_table(batch))
