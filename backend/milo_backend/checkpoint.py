"""Checkpoints of a training run: everything needed to continue exactly where it stopped.

`OUT/checkpoints/latest.pt` is replaced atomically; the previous one is kept as `previous.pt`, so a crash
while writing, or a NaN detected after the last save, never costs more than one interval.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from milo_backend.atomic import atomic_path
from milo_backend.errors import MiloError
from milo_backend.run_folder import RunFolder


def checkpoint_dir(out: Path) -> Path:
    return RunFolder(out).checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    return RunFolder(out).checkpoint


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(out: Path, payload: dict) -> Path:
    run = RunFolder(out)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    latest = run.latest_checkpoint
    # on a full disk, say what the folder needs: latest, previous and the copy being written
    with atomic_path(latest, needs=3 * _tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)
        if latest.exists():  # keep one generation back
            os.replace(latest, run.previous_checkpoint)
    return latest


def load_checkpoint(out: Path) -> dict:
    errors = []
    run = RunFolder(out)
    for p in (run.latest_checkpoint, run.previous_checkpoint):
        if not p.exists():
            continue
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file: fall back to the older one
            errors.append(f"{p.name}: {exc}")
    if errors:
        raise MiloError(f"the checkpoints in {checkpoint_dir(out)} are damaged ({'; '.join(errors)})",
                        hint="start again without --resume, into a new output folder",
                        path=checkpoint_dir(out))
    raise MiloError(f"no checkpoint to resume from in {out}", hint="run train without --resume first",
                    path=out)


def checkpoint_model(ckpt: dict, device: torch.device | str = "cpu"):
    """The Gaussians of a checkpoint (a `TrainingRun.save` payload), unbaked, with their filter state: how
    train (resume), extract and the repair of a damaged gaussians.ply all read it."""
    from milo_backend.gaussians.model import GaussianModel

    return GaussianModel.from_state_dict(ckpt["model"], device)


def checkpoint_mesh_state(ckpt: dict) -> dict:
    """The mesh phase's state in a checkpoint (`MeshPhase.load_state_dict`); not started in older ones."""
    return ckpt.get("mesh") or {"started_at": None}
