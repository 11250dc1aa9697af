"""Decoupled appearance (method section 9, `--decoupled-appearance`): per-photo exposure and white
balance are absorbed by a small network instead of by the Gaussians' colours.

A 64-d embedding per training image and a small CNN predict a per-pixel multiplicative colour map
from the render downsampled 32x; the corrected render `render * map` replaces the render in the L1
term only (SSIM still sees the raw render), and only during training: exported Gaussians and every
other render are uncorrected. The last layer starts at zero, so the map starts at exactly 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from milo_backend import losses

EMBED_DIM = 64
DOWNSAMPLE = 32
LR = 1e-3


class AppearanceModel(nn.Module):
    def __init__(self, n_images: int, embed_dim: int = EMBED_DIM, width: int = 64):
        super().__init__()
        self.embeddings = nn.Embedding(n_images, embed_dim)
        # unit-scale codes tell the images apart from the first step; the zero last layer keeps the
        # map at exactly 1 until the network has learned something
        nn.init.normal_(self.embeddings.weight, std=1.0)
        self.inp = nn.Conv2d(3 + embed_dim, width, 3, padding=1)
        # five x2 upsampling stages bring the 1/32 map back to full resolution
        chans = [width, width, width // 2, width // 4, width // 4, width // 4]
        self.ups = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(5))
        self.out = nn.Conv2d(chans[-1], 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def color_map(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """(H,W,3) multiplicative map for the render `image` (H,W,3) of training image `index`."""
        h, w = image.shape[:2]
        small = F.interpolate(image.permute(2, 0, 1)[None], size=(max(1, h // DOWNSAMPLE), max(1, w // DOWNSAMPLE)),
                              mode="bilinear", align_corners=False, antialias=True)
        emb = self.embeddings.weight[index][None, :, None, None].expand(1, -1, *small.shape[2:])
        x = F.relu(self.inp(torch.cat([small, emb], dim=1)))
        for conv in self.ups:
            x = F.relu(conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))
        x = F.interpolate(self.out(x), size=(h, w), mode="bilinear", align_corners=False)
        return (2 * torch.sigmoid(x))[0].permute(1, 2, 0)   # 1 at initialisation

    def forward(self, image: torch.Tensor, index: int) -> torch.Tensor:
        return image * self.color_map(image, index)


def make_appearance(n_images: int, device) -> tuple[AppearanceModel, torch.optim.Adam]:
    model = AppearanceModel(n_images).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def decoupled_photometric_loss(render: torch.Tensor, corrected: torch.Tensor, ref: torch.Tensor,
                               lambda_ssim: float = 0.2) -> torch.Tensor:
    """0.8 L1(corrected render) + 0.2 (1 - SSIM(raw render)): the appearance model never helps SSIM."""
    return (1 - lambda_ssim) * (corrected - ref).abs().mean() + lambda_ssim * (1 - losses.ssim(render, ref))
