"""Pictures people look at instead of numbers: training previews and the loss curve."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from milo_backend.atomic import atomic_path


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    if img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: torch.Tensor) -> np.ndarray:
    """Depth (H,W,1) -> grey image, near = bright, empty = black (robust 2-98% range)."""
    d = depth.detach().float().cpu().numpy()[..., 0]
    valid = d > 0
    out = np.zeros_like(d)
    if valid.any():
        lo, hi = np.percentile(d[valid], [2, 98])
        out[valid] = 1 - np.clip((d[valid] - lo) / max(hi - lo, 1e-8), 0, 1) * 0.8
    return to_uint8(out[..., None])


def normals_image(normals: torch.Tensor) -> np.ndarray:
    n = normals.detach().float().cpu()
    empty = n.norm(dim=-1, keepdim=True) < 0.5
    img = torch.where(empty, torch.zeros_like(n), n * torch.tensor([0.5, -0.5, -0.5]) + 0.5)
    return to_uint8(img)


def save_panel(path: Path, tiles: list[np.ndarray]) -> Path:
    """Save images side by side (all resized to the first one's height)."""
    h = tiles[0].shape[0]
    ims = [Image.fromarray(t) for t in tiles]
    ims = [im if im.height == h else im.resize((round(im.width * h / im.height), h)) for im in ims]
    panel = Image.new("RGB", (sum(im.width for im in ims), h))
    x = 0
    for im in ims:
        panel.paste(im, (x, 0))
        x += im.width
    with atomic_path(path) as tmp:
        panel.save(tmp, format="PNG")
    return path


def save_loss_curve(path: Path, history: list[dict]) -> Path | None:
    """Loss and PSNR against iteration (from the log's progress records)."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(it, [h["loss"] for h in history], lw=0.8, color="tab:blue", label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_yscale("log")
    if any(h.get("psnr") is not None for h in history):
        ax2 = ax.twinx()
        ax2.plot(it, [h.get("psnr") for h in history], lw=0.8, color="tab:red")
        ax2.set_ylabel("PSNR (dB, training view)", color="tab:red")
    ax.set_title("training")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
