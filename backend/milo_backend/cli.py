"""Command line: maps subcommands to pipeline functions, turns errors into events. No maths here.

Exit codes: 0 success, 2 a user-facing error (an `error` event with a hint), 130 cancelled (SIGINT or
SIGTERM; a checkpoint was saved and `--resume` continues), 1 an unexpected internal error.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from milo_backend import __version__
from milo_backend.errors import Cancelled, MiloError
from milo_backend.events import Reporter
from milo_backend.remote.client import add_ray_options
from milo_backend.run_folder import RunFolder


class UsageError(Exception):
    """A command line that argparse rejects (unknown flag, bad value)."""


class Parser(argparse.ArgumentParser):
    """argparse that raises on a bad command line instead of printing and exiting, so `--json` mode can
    still emit its one `error` event (subcommand parsers inherit the class)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _number(kind, minimum, what: str):
    """An argparse type: `kind` (int or float) of at least `minimum` (exclusive for floats)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
        if value < minimum or (kind is float and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {what}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, "a whole number of at least 1")
NON_NEGATIVE_INT = _number(int, 0, "0 or a whole number above it")
POSITIVE_FLOAT = _number(float, 0.0, "a number above 0")


def _threads(text: str) -> int:
    value = NON_NEGATIVE_INT(text) if text != "-1" else -1
    if value == 0:
        raise argparse.ArgumentTypeError("0 threads cannot run; give -1 (all cores) or a number of threads")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON-lines events on stdout")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of one reconstruction (train, and each scene of batch)."""
    from milo_backend.config import BASE_ITERATIONS, DEVICES, PRESETS, RENDERERS, SCENES

    p.add_argument("--preset", default="default", choices=list(PRESETS))
    p.add_argument("--scene", default="outdoor", choices=list(SCENES))
    p.add_argument("--iterations", type=POSITIVE_INT, default=BASE_ITERATIONS)
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--renderer", default="auto", choices=list(RENDERERS))
    p.add_argument("--max-size", type=POSITIVE_INT, default=None, help="longest image side in pixels")
    p.add_argument("--eval", action="store_true", help="hold out every 8th image (if no split is given)")
    p.add_argument("--white-background", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview-every", type=NON_NEGATIVE_INT, default=0, help="0: ten previews over the run")
    p.add_argument("--no-mesh", action="store_true", help="no mesh in the loop (Gaussians only; ablation)")
    p.add_argument("--no-extract", action="store_true", help="skip the final mesh extraction")
    p.add_argument("--remove-unseen", action="store_true", help="drop final-mesh vertices no camera sees")
    p.add_argument("--keep-fragments", action="store_true",
                   help="keep the final mesh's small disconnected pieces (dropped by default: mostly floaters)")
    p.add_argument("--decoupled-appearance", action="store_true",
                   help="per-image appearance network in the L1 term (photos with varying exposure)")
    p.add_argument("--depth-prior", type=Path, default=None, metavar="PATH",
                   help="TorchScript monocular depth network for the depth-order prior (off by default)")


def build_parser() -> argparse.ArgumentParser:
    from milo_backend.config import DEVICES, RENDERERS

    parser = Parser(prog="milo-backend", description="MILo: photos -> Gaussians + mesh")
    parser.add_argument("--version", action="version", version=f"milo-backend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sfm", help="structure from motion on a folder of photos -> COLMAP dataset")
    p.add_argument("images", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--threads", type=_threads, default=-1,
                   help="CPU threads (default all cores); 1 gives bit-identical results run after run")
    _add_common(p)

    p = sub.add_parser("train", help="train Gaussians on a dataset (COLMAP, transforms.json or photos)")
    p.add_argument("data", type=Path, help="COLMAP dataset, transforms.json dataset or a folder of photos")
    p.add_argument("out", type=Path, help="output folder")
    _add_train_options(p)
    add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("extract", help="final mesh of a trained run: OUT/mesh.ply + OUT/mesh_stats.json")
    p.add_argument("run", type=Path, help="a training output folder")
    p.add_argument("--iterations", type=POSITIVE_INT, default=None,
                   help="SDF refinement steps (default: 1000 scaled like the run's schedule)")
    p.add_argument("--remove-unseen", action="store_true", help="drop vertices that no camera sees")
    p.add_argument("--keep-fragments", action="store_true",
                   help="keep the mesh's small disconnected pieces (by default pieces with < 1%% of the faces, "
                        "mostly floaters, are dropped)")
    p.add_argument("--tsdf", type=POSITIVE_INT, nargs="?", const=192, default=None, metavar="VOXELS",
                   help="the TSDF-fusion baseline instead (the Gaussians' depth maps fused on a grid of VOXELS "
                        "across, default 192): OUT/mesh_tsdf.ply")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--renderer", default="auto", choices=list(RENDERERS))
    add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("render", help="render a trained run (or a 3DGS PLY) from given cameras")
    p.add_argument("source", type=Path, help="a run folder (with gaussians.ply) or a Gaussians PLY file")
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json (this project's format)")
    p.add_argument("--out", type=Path, required=True, help="folder for the images")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--renderer", default="auto", choices=list(RENDERERS))
    p.add_argument("--white-background", action="store_true")
    add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("batch", help="one reconstruction per photo folder or dataset, scheduled by Ray over a "
                                     "cluster's GPUs and CPUs (or this computer's cores): a summary table in OUT")
    p.add_argument("scenes", type=Path, nargs="+", help="photo folders or datasets, one reconstruction each")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs (one subfolder per scene)")
    _add_train_options(p)
    add_ray_options(p)
    p.add_argument("--retries", type=NON_NEGATIVE_INT, default=2,
                   help="new workers for a scene whose worker died, each from its last checkpoint")
    _add_common(p)

    p = sub.add_parser("eval", help="PSNR/SSIM on held-out views of a trained run, or with --gt the mesh "
                                    "against a ground-truth mesh (JSON)")
    p.add_argument("run", type=Path)
    p.add_argument("--gt", type=Path, default=None, metavar="MESH",
                   help="ground-truth mesh (.ply/.obj): accuracy, completeness, Chamfer, F-score of OUT/mesh.ply")
    p.add_argument("--crop", type=Path, default=None, metavar="BOX.json",
                   help='with --gt: judge only inside this box, a JSON file {"lo": [x,y,z], "hi": [x,y,z]} '
                        "(default: the ground truth's box grown by the threshold)")
    p.add_argument("--threshold", type=POSITIVE_FLOAT, default=0.01,
                   help="F-score distance threshold, as a fraction of the ground truth's bbox diagonal")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    _add_common(p)

    p = sub.add_parser("sample", help="generate the bundled synthetic sample scene")
    p.add_argument("out", type=Path)
    p.add_argument("--views", type=_number(int, 2, "at least 2 views"), default=32)
    p.add_argument("--size", type=_number(int, 16, "at least 16 pixels"), default=128)
    _add_common(p)

    p = sub.add_parser("doctor", help="report Python, torch, CUDA, GPU and the GPU extensions (JSON)")
    p.add_argument("--compile", action="store_true", help="also JIT-compile gsplat/nvdiffrast (minutes)")
    _add_common(p)

    p = sub.add_parser("setup-gpu", help="install or build the CUDA kernels (gsplat, nvdiffrast) where possible, "
                                         "else say why the PyTorch path runs on the GPU")
    _add_common(p)

    p = sub.add_parser("bench", help="run benchmarks and write their tables to BENCHMARKS.md")
    p.add_argument("what", nargs="*", default=["train"], help="sections: train render mesh gaussians sfm mesh-loop suite ray cpu-kernels (default train)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--fox", type=Path, default=None, help="the fox dataset folder (sfm and GPU benchmarks)")
    _add_common(p)
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    cmd = args.command
    if getattr(args, "ray", None) and cmd != "batch":  # the same command on a Ray cluster: its own exit code
        from milo_backend.remote.client import run_on_ray

        return run_on_ray(subcommand_parser(cmd), args, reporter)
    if cmd == "batch":
        from milo_backend.remote.batch import run_batch

        return run_batch(args, subcommand_parser("train"), reporter)
    if cmd == "train":
        from milo_backend.config import TrainConfig
        from milo_backend.train import train

        cfg = TrainConfig(iterations=args.iterations, preset=args.preset, scene=args.scene, device=args.device,
                          renderer=args.renderer, max_size=args.max_size, eval_split=args.eval,
                          white_background=args.white_background, seed=args.seed,
                          preview_every=args.preview_every, mesh=not args.no_mesh,
                          extract_mesh=not args.no_extract, remove_unseen=args.remove_unseen,
                          keep_fragments=args.keep_fragments,
                          decoupled_appearance=args.decoupled_appearance,
                          depth_prior=str(args.depth_prior) if args.depth_prior else None)
        outputs = train(args.data, args.out, cfg, reporter, resume=args.resume)
        reporter.done(**outputs)
    elif cmd == "sfm":
        from milo_backend.data.features import SfmOptions
        from milo_backend.data.sfm import run_sfm

        reporter.attach_log(RunFolder(args.out).log)
        result = run_sfm(args.images, args.out, reporter, SfmOptions(num_threads=args.threads))
        reporter.done(dataset=str(Path(result).resolve()))
    elif cmd == "render":
        from milo_backend.evaluate import render_cameras

        paths = render_cameras(args.source, args.cameras, args.out, reporter, device=args.device,
                               renderer=args.renderer, white_background=args.white_background)
        reporter.done(images=str(args.out.resolve()), count=len(paths))
    elif cmd == "extract":
        from milo_backend.extract import extract_run

        if args.run.is_dir():
            reporter.attach_log(RunFolder(args.run).log)
        outputs = extract_run(args.run, reporter, device=args.device, iterations=args.iterations,
                              remove_unseen=args.remove_unseen, renderer=args.renderer,
                              keep_fragments=args.keep_fragments, tsdf=args.tsdf)
        reporter.done(**outputs)
    elif cmd == "eval":
        import json

        from milo_backend.evaluate import evaluate_run
        from milo_backend.mesh_metrics import evaluate_mesh

        if args.gt is not None:
            metrics = evaluate_mesh(args.run, args.gt, threshold=args.threshold, reporter=reporter, crop=args.crop)
        else:
            metrics = evaluate_run(args.run, reporter, device=args.device)
        if not args.json:
            print(json.dumps(metrics, indent=2))
        reporter.done(**metrics)
    elif cmd == "sample":
        from milo_backend.data.synthetic import make_synthetic_scene

        reporter.stage("sample", "Generating the synthetic sample scene")
        path = make_synthetic_scene(args.out, n_views=args.views, size=args.size, reporter=reporter)
        reporter.done(dataset=str(path.resolve()))
    elif cmd == "doctor":
        import json

        from milo_backend.doctor import doctor

        report = doctor(compile_extensions=args.compile)
        if not args.json:
            print(json.dumps(report, indent=2))
        reporter.done(**report)
    elif cmd == "setup-gpu":
        from milo_backend.gpu_kernels import setup

        reporter.done(kernels=setup(reporter))
    elif cmd == "bench":
        from milo_backend.bench.run import run_benchmarks

        run_benchmarks(args.what, args.out, reporter, device=args.device, fox=args.fox)
        reporter.done(benchmarks=str(args.out.resolve()))
    return 0


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def json_event_stream():
    """A private handle on stdout for the JSON events; file descriptor 1 itself is pointed at stderr, so
    whatever else writes to stdout (C libraries: OpenBLAS, COLMAP's logging) cannot break the protocol."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "w", encoding="utf-8", buffering=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        hint = "see milo-backend --help, or milo-backend COMMAND --help"
        if "--json" in argv:  # the caller reads events: exactly one error event, as for any other error
            reporter = Reporter(json_mode=True, stream=json_event_stream())
            reporter.error(str(exc), hint)
            reporter.close()
        else:
            print(f"{exc}\n({hint})", file=sys.stderr)
        return 2
    json_mode = getattr(args, "json", False)
    reporter = Reporter(json_mode=json_mode, stream=json_event_stream() if json_mode else None)
    try:
        return run(args, reporter)
    except MiloError as exc:
        reporter.error(exc.message, exc.hint, exc.path)
        return 2
    except Cancelled as exc:
        reporter.emit("cancelled", message="stopped on request; a checkpoint was saved", checkpoint=str(exc),
                      hint="run the same command with --resume to continue")
        return 130
    except KeyboardInterrupt:
        reporter.emit("cancelled", message="stopped on request before training started", checkpoint=None,
                      hint="nothing was lost; run the command again")
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: still one readable event, and the trace in the log
        reporter.log(traceback.format_exc())
        reporter.error(f"internal error: {type(exc).__name__}: {exc}",
                       hint="this is a bug; please report it with the log file (OUT/log.jsonl)")
        return 1
    finally:
        reporter.close()


if __name__ == "__main__":
    sys.exit(main())
