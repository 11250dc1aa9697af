"""Benchmark of the binding maths: `python -m tools.bench_binding [--splats N] [--subdivisions S]`.

A bumpy sphere of 6 * S^2 * 2 triangles (S = 91: ~100k) carries N splats (default 500k) scattered around its
surface (2% far off it, which the search must also answer exactly); it is then twisted and bent. Measures bind,
deform with and without stretch, SH rotation of degree 3 and the topology check, and writes the "binding"
section of BENCHMARKS.md. Needs the backend package only for the benchmark file helpers.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from milo_blender.core.binding import bind, deform
from milo_blender.core.topology_tracking import check_topology
from milo_blender.core.sh_rotation import rotate_sh, rotate_sh_components
from tools.bench_common import bench_parser, publish



def cube_mesh(subdivisions: int, spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Closed cube [-1, 1]^3 whose faces are S x S quad grids (2 outward triangles each), shared vertices
    merged; `spherical` projects the vertices onto the unit sphere."""
    s = subdivisions
    u = np.linspace(-1.0, 1.0, s + 1)
    gu, gv = np.meshgrid(u, u, indexing="ij")
    grid = np.arange((s + 1) ** 2).reshape(s + 1, s + 1)
    quads = np.stack([grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]], axis=-1).reshape(-1, 4)
    points, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = np.zeros(gu.shape + (3,))
            p[..., axis] = sign
            p[..., (axis + 1) % 3] = gu * sign   # flipping one tangent with the sign keeps the normals outward
            p[..., (axis + 2) % 3] = gv
            base = sum(len(x) for x in points)
            points.append(p.reshape(-1, 3))
            faces.append(np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]) + base)
    points, faces = np.concatenate(points), np.concatenate(faces)
    unique, index = np.unique(np.round(points, 9), axis=0, return_inverse=True)
    if spherical:
        unique = unique / np.linalg.norm(unique, axis=1, keepdims=True)
    return unique, index.reshape(-1)[faces]


def bumpy(vertices: np.ndarray) -> np.ndarray:
    x, y, z = vertices.T
    return vertices * (1 + 0.1 * np.sin(5 * x) * np.sin(5 * y) * np.sin(5 * z))[:, None]


def twist_and_bend(vertices: np.ndarray) -> np.ndarray:
    x, y, z = vertices.T
    angle = 1.2 * z
    c, s = np.cos(angle), np.sin(angle)
    out = np.stack([c * x - s * y, s * x + c * y, z], axis=-1)
    out[:, 0] += 0.3 * z * z
    return out


def splats_around(vertices: np.ndarray, triangles: np.ndarray, n: int, rng: np.random.Generator):
    """n Gaussians: 98% near random surface points, 2% anywhere in a box twice the mesh's size."""
    face = rng.integers(0, len(triangles), n)
    r = rng.random((n, 2))
    flip = r.sum(1) > 1
    r[flip] = 1 - r[flip]
    v = vertices[triangles[face]]
    normal = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    means = v[:, 0] + r[:, :1] * (v[:, 1] - v[:, 0]) + r[:, 1:] * (v[:, 2] - v[:, 0])
    means += normal * rng.normal(0, 0.01, (n, 1))
    far = rng.random(n) < 0.02
    means[far] = rng.uniform(-2, 2, (int(far.sum()), 3))
    quats = rng.normal(size=(n, 4))
    log_scales = rng.normal(-4.5, 0.5, (n, 3))
    sh = rng.normal(0, 0.2, (n, 15, 3)).astype(np.float32)
    return means, quats, log_scales, sh


def timed(fn, repeats: int) -> dict:
    """Median wall and process CPU milliseconds. Other jobs on a shared machine inflate wall time; CPU time of
    this single-threaded numpy code is close to what an idle machine's wall clock would show."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"ms": 1000 * statistics.median(wall), "cpu ms": 1000 * statistics.median(cpu), "runs": repeats}


def run(n_splats: int, subdivisions: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    sphere, triangles = cube_mesh(subdivisions, spherical=True)
    rest = bumpy(sphere)
    means, quats, log_scales, sh = splats_around(rest, triangles, n_splats, rng)
    deformed = twist_and_bend(rest).astype(np.float32)
    common = {"splats": n_splats, "triangles": len(triangles), "vertices": len(rest)}
    rows = []
    binding = None

    def bind_once():
        nonlocal binding
        binding = bind(rest, triangles, means, quats, log_scales)

    rows.append({"operation": "bind (nearest triangle, exact)", **common, **timed(bind_once, 1)})
    deform(binding, deformed, True)  # fills the per-binding caches once, as the first frame in Blender does
    for stretch in (False, True):
        rows.append({"operation": f"deform, scale_with_stretch={stretch}", **common,
                     **timed(lambda: deform(binding, deformed, stretch), repeats)})
    rotation = deform(binding, deformed)[3]
    few = max(1, repeats // 2)
    rows.append({"operation": "rotate_sh degree 3, (N, 15, 3)", **common,
                 **timed(lambda: rotate_sh(sh, rotation), few)})
    rows_f_rest = np.ascontiguousarray(sh.transpose(1, 2, 0))
    rows.append({"operation": "rotate_sh_components degree 3, (15, 3, N)", **common,
                 **timed(lambda: rotate_sh_components(rows_f_rest, rotation), few)})
    rows.append({"operation": "check_topology (triangles unchanged)", **common,
                 **timed(lambda: check_topology(binding, len(rest), triangles), few)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="deform runs; the median is reported")
    args = parser.parse_args(argv)
    rows = run(args.splats, args.subdivisions, args.repeats)
    publish("binding", "Binding: splats follow the mesh (numpy, single thread)", "tools.bench_binding", argv,
            f"numpy {np.__version__}; medians of `runs`; `ms` wall clock, `cpu ms` process CPU time (the machine is "
            "shared: CPU time is what an idle machine's wall clock would show). Target: deform of 500k splats on "
            "~100k triangles <= 100 ms.", rows,
            ["operation", "splats", "triangles", "vertices", "ms", "cpu ms", "runs"], write=not args.no_write)


if __name__ == "__main__":
    main()
