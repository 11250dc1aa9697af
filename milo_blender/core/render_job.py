"""Rendering animated splats with the backend: one `render` command per frame, since the splats move between
frames (the backend renders one PLY from the cameras of one cameras.json). Argument lists only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backend import DEVICES, backend_command
from .job import Step

WORK_FOLDER = "splats"        # inside the output folder: the per-frame PLY and cameras.json sent to the backend


@dataclass(frozen=True)
class RenderFrame:
    name: str                 # the image is <out>/<name>.png
    splats: Path
    cameras: Path


def frame_inputs(out_dir: str | Path, name: str) -> RenderFrame:
    work = Path(out_dir) / WORK_FOLDER
    return RenderFrame(name, work / f"{name}.ply", work / f"{name}.json")


def render_steps(python: str | Path, frames: list[RenderFrame], out_dir: str | Path, device: str = "auto"
                 ) -> list[Step]:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if not frames:
        raise ValueError("no frames to render")
    return [Step(backend_command(python, "render", frame.splats, "--cameras", frame.cameras, "--out", out_dir,
                                 "--device", device), f"Rendering {frame.name}")
            for frame in frames]
