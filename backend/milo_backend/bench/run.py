"""`milo-backend bench SECTION...`: run the named benchmarks and update their sections of BENCHMARKS.md."""
from __future__ import annotations

from pathlib import Path

from milo_backend.bench import write_section
from milo_backend.device import select_device
from milo_backend.errors import MiloError

FOX = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "fox"


def run_benchmarks(what: list[str], out: Path, reporter, device: str = "auto", fox: Path | None = None) -> None:
    dev = select_device(device).type
    fox = fox or FOX
    for name in what:
        reporter.stage(f"bench:{name}", f"Benchmark: {name}")
        if name == "train":
            from milo_backend.bench.train import bench_train
            md = bench_train(dev)
        elif name == "render":
            from milo_backend.bench.render import bench_render
            md = bench_render(dev)
        elif name == "mesh":
            from milo_backend.bench.mesh import bench_mesh
            md = bench_mesh(dev)
        elif name == "sfm":
            from milo_backend.bench.sfm import bench_sfm
            if not (fox / "images").is_dir():
                raise MiloError(f"the fox photos are not at {fox}", hint="pass --fox PATH/TO/fox")
            md = bench_sfm(fox, out.parent / "runs" / "bench_sfm")
        else:
            raise MiloError(f"unknown benchmark {name!r}", hint="choose from: train render mesh sfm")
        write_section(name, md, out)
        reporter.artifact("benchmark", out)
