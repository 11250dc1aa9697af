"""`milo-backend bench SECTION...`: run the named benchmarks and update their sections of BENCHMARKS.md."""
from __future__ import annotations

import tempfile
from pathlib import Path

from milo_backend.bench import shared_data, write_section
from milo_backend.device import select_device
from milo_backend.errors import MiloError

FOX = shared_data("fox")
SECTIONS = ("train", "render", "mesh", "gaussians", "sfm", "mesh-loop", "suite", "ray", "cpu-kernels")


def run_benchmarks(what: list[str], out: Path, reporter, device: str = "auto", fox: Path | None = None) -> None:
    dev = select_device(device).type
    fox = Path(fox or FOX)
    unknown = [w for w in what if w not in SECTIONS]
    if unknown:
        raise MiloError(f"unknown benchmark {', '.join(unknown)}", hint=f"choose from: {' '.join(SECTIONS)}")
    for name in what:
        reporter.stage(f"bench:{name}", f"Benchmark: {name}")
        section = name
        if name == "train":
            from milo_backend.bench.train import bench_train
            md = bench_train(dev)
        elif name == "render":
            from milo_backend.bench.render import bench_render
            md = bench_render(dev)
            section = "render" if dev == "cpu" else "render-cuda"
        elif name == "mesh":
            from milo_backend.bench.mesh import bench_mesh
            md = bench_mesh(dev)
        elif name == "gaussians":
            from milo_backend.bench.gaussians import bench_gaussians
            md = bench_gaussians(dev)
            section = f"gaussians-{dev}"
        elif name == "mesh-loop":
            from milo_backend.bench.mesh_loop import bench_fox, bench_mesh_loop
            pictures = out.parent / "benchmarks"
            md = bench_mesh_loop(dev, pictures=pictures)
            if (fox / "transforms.json").is_file():
                md += bench_fox(dev, fox=fox, picture=pictures / "fox_mesh.png")
        elif name == "suite":
            from milo_backend.bench.suite import bench_suite
            md = bench_suite(dev)
        elif name == "cpu-kernels":
            from milo_backend.bench.cpu_kernels import bench_cpu_kernels
            md = bench_cpu_kernels(fox)
        elif name == "ray":
            from milo_backend.bench.ray import bench_ray
            md = bench_ray()
        else:  # sfm
            from milo_backend.bench.sfm import bench_sfm
            if not (fox / "images").is_dir():
                raise MiloError(f"the fox photos are not at {fox}", hint="pass --fox PATH/TO/fox")
            with tempfile.TemporaryDirectory() as work:
                md = bench_sfm(fox, work, benchmarks=out)
        write_section(section, md, out)
        reporter.artifact("benchmark", out)
