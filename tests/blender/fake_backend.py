"""A stand-in for `python -m milo_backend` that speaks the same JSON-lines protocol and honours the same
contracts (refuse an output folder holding a run unless --resume, checkpoint + exit 130 on SIGINT,
error + exit 2 on bad input), but trains nothing, so extension tests control timing and failures.

MILO_FAKE_MODE: "ok" (default), "crash" (killed mid-run, no event: like the OOM killer), "child"
(also starts a grandchild process in its group, which the runner must not leave behind), "silent" (hangs
without a word after its first steps, ignoring SIGINT: a stuck backend), "garbage" (prints text that is
not the protocol and exits 0: another program, or a mismatched version).
MILO_FAKE_STEP_S: seconds per step (default 0.01). MILO_FAKE_STEPS overrides --iterations.
The scene's up is world +Y, so the extension's up-axis estimation has something to do.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from plyfile import PlyData, PlyElement

from milo_backend.data.camera import Camera, look_at
from milo_backend.gaussians.splat_ply import write_splat_ply

UP = np.array([0.0, 1.0, 0.0])


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, "v": 1, "time": time.time(), **fields}), flush=True)


def fake_cameras(n: int = 6) -> list[Camera]:
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        eye = np.array([3 * np.cos(a), 1.0, 3 * np.sin(a)])
        cams.append(Camera(name=f"view_{i:02d}.png", width=64, height=48, fx=60.0, fy=60.0, cx=31.0, cy=25.0,
                           world_to_cam=look_at(eye, np.zeros(3), up=UP)))
    return cams


def write_mesh(path: Path) -> None:
    v = np.array([(-1, 0, -1, 255, 0, 0), (1, 0, -1, 0, 255, 0), (1, 0, 1, 0, 0, 255), (-1, 0, 1, 255, 255, 0),
                  (0, 1, 0, 255, 255, 255)],
                 dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    faces = [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 3, 2], [0, 2, 1]]
    f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")]).write(str(path))


def train(args) -> int:
    data, out = Path(args.data), Path(args.out)
    images = [p for p in data.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")] if data.is_dir() else []
    if not images and not (data / "transforms.json").exists():
        emit("error", message=f"no images found in {data}", hint="choose a folder that holds JPEG or PNG photos",
             path=str(data))
        return 2
    ckpt = out / "checkpoints" / "latest.pt"
    if not args.resume and (ckpt.exists() or (out / "gaussians.ply").exists()):
        emit("error", message=f"{out} already holds a training run",
             hint="add --resume to continue it, or choose another output folder", path=str(out))
        return 2
    out.mkdir(parents=True, exist_ok=True)
    stop = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    mode = os.environ.get("MILO_FAKE_MODE", "ok")
    if mode in ("child", "crash"):
        # a worker process in the same group: must die with the backend
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (out / "child.pid").write_text(str(child.pid))
    if mode == "garbage":
        print("Hello from some other program\n{not json}", flush=True)
        return 0
    emit("stage", stage="load", message=f"Loading {data}")
    cams = fake_cameras()
    (out / "cameras.json").write_text(json.dumps({"cameras": [c.to_json() for c in cams], "extent": 3.3}))
    emit("artifact", kind="cameras", path=str((out / "cameras.json").resolve()))
    start = int(ckpt.read_text()) if args.resume and ckpt.exists() else 0
    total = int(os.environ.get("MILO_FAKE_STEPS", args.iterations))
    step_s = float(os.environ.get("MILO_FAKE_STEP_S", "0.01"))
    emit("stage", stage="train", message=f"Training {total} iterations on cpu")
    for it in range(start + 1, total + 1):
        if stop["flag"]:
            ckpt.parent.mkdir(exist_ok=True)
            ckpt.write_text(str(it - 1))
            emit("artifact", kind="checkpoint", path=str(ckpt.resolve()))
            emit("cancelled", message="stopped on request; a checkpoint was saved", checkpoint=str(ckpt.resolve()),
                 hint="run the same command with --resume to continue")
            return 130
        time.sleep(step_s)
        emit("progress", stage="train", step=it, total=total, eta_s=(total - it) * step_s, loss=1.0 / it,
             psnr=10.0 + it / total, gaussians=100)
        if it % max(1, total // 4) == 0:
            ckpt.parent.mkdir(exist_ok=True)
            ckpt.write_text(str(it))
            emit("artifact", kind="checkpoint", path=str(ckpt.resolve()))
            preview = out / "previews" / f"train_{it:06d}.png"
            preview.parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 16, 3), it % 255, np.uint8)).save(preview)
            emit("artifact", kind="preview", path=str(preview.resolve()))
        if mode == "silent" and it == 3:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            time.sleep(600)
        if mode == "crash" and it == total // 2:
            print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    rng = np.random.default_rng(0)
    n = 50
    means = rng.uniform(-1, 1, (n, 3)) * [1, 0.1, 1]  # a flat layer in the XZ plane: the ground
    write_splat_ply(out / "gaussians.ply", means, rng.normal(0, 0.5, (n, 4, 3)), rng.normal(0, 1, n),
                    np.full((n, 3), -3.0), np.tile([1.0, 0, 0, 0], (n, 1)))
    emit("artifact", kind="gaussians", path=str((out / "gaussians.ply").resolve()))
    write_mesh(out / "mesh.ply")
    emit("artifact", kind="mesh", path=str((out / "mesh.ply").resolve()))
    emit("done", outputs={"gaussians": str((out / "gaussians.ply").resolve()),
                          "mesh": str((out / "mesh.ply").resolve()),
                          "cameras": str((out / "cameras.json").resolve())})
    return 0


def main(argv: list[str]) -> int:
    if argv[:2] != ["-m", "milo_backend"]:
        print(f"fake backend: expected '-m milo_backend', got {argv}", file=sys.stderr)
        return 1
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("data")
    t.add_argument("out")
    t.add_argument("--iterations", type=int, default=100)
    t.add_argument("--resume", action="store_true")
    sub.add_parser("doctor")
    args, _ = p.parse_known_args(argv[2:])
    if args.command == "doctor":
        emit("done", outputs={"python": sys.version.split()[0], "torch": "0.0-fake", "cuda_available": False,
                              "gpus": [], "gsplat": {"import": True}, "nvdiffrast": {"import": False}})
        return 0
    return train(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
