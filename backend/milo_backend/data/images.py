"""Image files in, float arrays out: EXIF orientation, grayscale, palette, alpha and 16-bit handled once here.

Pillow decodes every format we accept. Two of its limits matter: 16-bit grayscale stays 16-bit (scaled by
65535 below), but 16-bit RGB PNG/TIFF are delivered at 8 bits per channel (correctly scaled, 8-bit precision),
which is also what the training images are stored as (`ImageCache` keeps uint8).
"""
from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from milo_backend.errors import MiloError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


# -- listing ------------------------------------------------------------------------------------
def natural_key(name: str) -> list:
    """Sort key where "img2" < "img10" (digit runs compare as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", name) if part]


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder` (not recursive), in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MiloError(f"Image folder not found: {folder}", hint="Check the path.", path=folder)
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


# -- decoding -----------------------------------------------------------------------------------
def open_image(path: str | Path) -> Image.Image:
    """Decode `path` fully (so truncation is detected here) with its EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise MiloError(f"Image not found: {path}", hint="Check that the file exists.", path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Possibly corrupt EXIF data": harmless for pixels
            with Image.open(path) as im:
                im.load()
                return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise MiloError(f"Image {path.name} is too large to load safely ({exc})",
                        hint="Downscale the photo (e.g. to 8000 px on the longest side).", path=path) from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise MiloError(f"Cannot read image {path}: it is corrupt, truncated or not an image ({exc})",
                        hint="Re-export or re-copy the file, or remove it from the folder.", path=path) from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, reading only the header."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError) as exc:
        raise MiloError(f"Cannot read image {path} ({exc})", hint="Re-export or re-copy the file.",
                        path=path) from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # 5-8 are the transposing orientations


def is_plain_8bit(path: str | Path) -> bool:
    """True for an upright 8-bit RGB/gray JPEG or PNG, which COLMAP reads as is (no re-encoding needed)."""
    with Image.open(path) as im:
        return im.format in ("JPEG", "MPO", "PNG") and im.mode in ("RGB", "L") and \
            im.getexif().get(0x0112, 1) == 1


def focal_35mm(path: str | Path) -> float | None:
    """EXIF 35 mm-equivalent focal length in mm (the usual way phones record their lens), or None."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get_ifd(0x8769).get(0xA405)  # Exif IFD, FocalLengthIn35mmFilm
    except (OSError, ValueError, SyntaxError):
        return None
    return float(value) if value else None


def pil_to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """PIL image of any mode -> (rgb float32 HxWx3 in [0,1], alpha float32 HxW or None)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
        gray = np.asarray(im).astype(np.float32)
        scale = 65535.0 if mode != "I" or gray.max(initial=0) <= 65535 else float(gray.max())
        gray = np.clip(gray / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode == "F":  # float TIFF: assumed to be in [0, 1] already
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    im = im.convert("RGBA" if has_alpha else "RGB")  # palette, grayscale, CMYK, YCbCr... -> RGB(A)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return (np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])) if has_alpha else (arr, None)


def fit_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """Size with the longest side limited to `max_size` (aspect kept; never upscales)."""
    if not max_size or max(width, height) <= max_size:
        return int(width), int(height)
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize(arr: np.ndarray | torch.Tensor, width: int, height: int) -> torch.Tensor:
    """HxWxC float image -> height x width x C float tensor (antialiased bilinear; exact copy if same size)."""
    t = torch.as_tensor(arr, dtype=torch.float32)
    if t.shape[0] == height and t.shape[1] == width:
        return t
    chw = t.permute(2, 0, 1)[None]
    out = F.interpolate(chw, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).clamp_(0.0, 1.0)


def load_image(path: str | Path, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb float32 HxWx3 in [0,1], alpha float32 HxW or None), EXIF-oriented, longest side <= max_size."""
    rgb, alpha = pil_to_arrays(open_image(path))
    h, w = rgb.shape[:2]
    w2, h2 = fit_size(w, h, max_size)
    if (w2, h2) != (w, h):
        stacked = np.concatenate([rgb, alpha[..., None]], axis=2) if alpha is not None else rgb
        out = resize(stacked, w2, h2).numpy()
        rgb, alpha = out[..., :3], (out[..., 3] if alpha is not None else None)
    return np.ascontiguousarray(rgb), (np.ascontiguousarray(alpha) if alpha is not None else None)


def save_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    """Write float [0,1] rgb (+alpha) as an 8-bit PNG (lossless; keeps alpha), atomically."""
    from milo_backend.atomic import atomic_path

    arr = rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], axis=2)
    u8 = np.clip(np.rint(np.asarray(arr) * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(u8, "RGBA" if alpha is not None else "RGB").save(tmp, format="PNG", compress_level=1)
    return Path(path)


# -- the training-time cache ------------------------------------------------------------------
class ImageCache:
    """Each (image, resolution) decoded and resized once, kept as a uint8 tensor (4x smaller than float).

    Training reads one image per iteration, first at half and then at full resolution, so both sizes of
    every photo end up here. `max_bytes` bounds the memory: least recently used entries are dropped.
    """

    def __init__(self, max_bytes: int = 8 << 30):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, camera, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rgb float (H,W,3) in [0,1], alpha float (H,W,1) or None) for `camera`, on `device`."""
        key = (str(camera.image_path), int(camera.width), int(camera.height))
        u8 = self._entries.get(key)
        if u8 is None:
            u8 = self._load(camera)
            self._entries[key] = u8
            self._bytes += u8.numel()
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.numel()
        else:
            self._entries.move_to_end(key)
        img = u8.to(device, non_blocking=True).float().div_(255.0)
        return img[..., :3], (img[..., 3:] if img.shape[-1] == 4 else None)

    @staticmethod
    def _load(camera) -> torch.Tensor:
        if camera.image_path is None:
            raise MiloError(f"Camera {camera.name} has no image file", hint="Reload the dataset.")
        rgb, alpha = load_image(camera.image_path)
        h, w = rgb.shape[:2]
        # the same picture at the camera's size: equal aspect ratios up to 1% plus the rounding of small
        # sizes to whole pixels (a 201x361 photo is 36x64 at --max-size 64: aspect 0.557 against 0.5625)
        s = max(camera.width, camera.height) / max(w, h)
        if abs(w * s - camera.width) > 1 + 0.01 * camera.width or abs(h * s - camera.height) > 1 + 0.01 * camera.height:
            raise MiloError(f"Image {camera.image_path} is {w}x{h} but its camera expects "
                            f"{camera.width}x{camera.height} (a different aspect ratio)",
                            hint="The image was replaced or cropped after the cameras were computed; "
                                 "restore it or recompute the cameras.", path=camera.image_path)
        arr = np.concatenate([rgb, alpha[..., None]], axis=2) if alpha is not None else rgb
        out = resize(arr, camera.width, camera.height)
        return out.mul_(255.0).round_().to(torch.uint8).contiguous()


def training_image(images: ImageCache, camera, background: torch.Tensor) -> torch.Tensor:
    """The photo of `camera` at its resolution; transparent pixels take the background colour."""
    rgb, alpha = images.get(camera, background.device)
    return rgb if alpha is None else rgb * alpha + background * (1 - alpha)
