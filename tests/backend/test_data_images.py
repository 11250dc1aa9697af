"""Image loading: every variant a user's photo folder can contain, and the training-time cache."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from milo_backend.data.camera import Camera
from milo_backend.data.images import ImageCache, fit_size, image_size, list_images, load_image
from milo_backend.errors import MiloError


def write_png16(path: Path, arr: np.ndarray) -> Path:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB)."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_exif_orientation_really_rotates(tmp_path):
    # stored 40 wide x 20 high, with a red marker in the stored top-left corner; EXIF 6 = rotate 90 CW
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:5, :5] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    rgb, alpha = load_image(tmp_path / "rot.jpg")
    assert rgb.shape == (40, 20, 3) and alpha is None
    assert image_size(tmp_path / "rot.jpg") == (20, 40)
    # after a 90 degree clockwise rotation the stored top-left corner is displayed top-right
    assert rgb[1, -2, 0] > 0.8 and rgb[1, 1, 0] < 0.2


def test_16bit_png_and_tiff_are_scaled_to_unit_range(tmp_path):
    gray = np.full((6, 7), 40000, np.uint16)
    rgb, _ = load_image(write_png16(tmp_path / "g16.png", gray))
    assert rgb.shape == (6, 7, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, 40000 / 65535, atol=1e-6)  # full 16-bit precision for gray

    colour = np.zeros((6, 7, 3), np.uint16)
    colour[..., 0], colour[..., 1], colour[..., 2] = 65535, 32768, 0
    rgb, _ = load_image(write_png16(tmp_path / "c16.png", colour))
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.5, 0.0], atol=1 / 255)

    Image.fromarray(np.full((5, 4), 65535 // 4, np.uint16)).save(tmp_path / "g16.tif")
    rgb, _ = load_image(tmp_path / "g16.tif")
    np.testing.assert_allclose(rgb, (65535 // 4) / 65535, atol=1e-6)


def test_grayscale_palette_and_rgba(tmp_path):
    Image.fromarray(np.full((4, 5), 128, np.uint8), "L").save(tmp_path / "gray.png")
    rgb, alpha = load_image(tmp_path / "gray.png")
    assert rgb.shape == (4, 5, 3) and alpha is None
    np.testing.assert_allclose(rgb, 128 / 255)

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 51
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb, alpha = load_image(tmp_path / "rgba.png")
    assert alpha is not None and alpha.shape == (4, 5)
    np.testing.assert_allclose(alpha, 51 / 255)
    np.testing.assert_allclose(rgb[..., 1], 200 / 255)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    rgb, alpha = load_image(tmp_path / "pal.png")
    assert alpha is None
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[0, 1], [0, 0, 1])


def test_truncated_and_garbage_files_raise_milo_error_naming_the_file(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    for name in ("cut.jpg", "junk.png"):
        with pytest.raises(MiloError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and err.value.path == str(tmp_path / name)
    with pytest.raises(MiloError):
        load_image(tmp_path / "absent.png")


def test_max_size_limits_longest_side(tmp_path):
    Image.fromarray(np.full((30, 100, 3), 77, np.uint8)).save(tmp_path / "wide.png")
    rgb, _ = load_image(tmp_path / "wide.png", max_size=50)
    assert rgb.shape == (15, 50, 3)
    np.testing.assert_allclose(rgb, 77 / 255, atol=1e-5)  # a flat image stays flat (no border darkening)
    assert fit_size(100, 30, None) == (100, 30) and fit_size(100, 30, 200) == (100, 30)


def test_list_images_filters_case_insensitively_and_sorts_naturally(tmp_path):
    folder = tmp_path / "mes photos é"
    folder.mkdir()
    for name in ("img10.JPG", "img2.png", "img1.jpeg", "notes.txt", ".hidden.jpg", "x.TIFF", "y.webp", "z.bmp"):
        (folder / name).write_bytes(b"")
    (folder / "sub.jpg").mkdir()
    assert [p.name for p in list_images(folder)] == ["img1.jpeg", "img2.png", "img10.JPG", "x.TIFF", "y.webp", "z.bmp"]
    with pytest.raises(MiloError):
        list_images(tmp_path / "nope")


def test_image_cache_loads_once_per_resolution_and_returns_floats(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:, 30:, 3] = 0
    path = tmp_path / "é photo.png"
    Image.fromarray(rgba, "RGBA").save(path)
    cam = Camera("é photo.png", 60, 40, 50.0, 50.0, 30.0, 20.0, image_path=path)
    cache = ImageCache()
    rgb, alpha = cache.get(cam)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == torch.float32 and alpha.shape == (40, 60, 1)
    assert float(rgb[0, 0, 0]) == 1.0 and float(alpha[0, 0, 0]) == 1.0 and float(alpha[0, -1, 0]) == 0.0
    half = cam.downscaled(2)
    rgb_half, _ = cache.get(half)
    assert rgb_half.shape == (20, 30, 3)
    path.unlink()  # served from memory from now on
    cache.get(cam), cache.get(half)
    assert len(cache) == 2 and cache.nbytes == 40 * 60 * 4 + 20 * 30 * 4


def test_image_cache_evicts_least_recently_used_and_rejects_wrong_aspect(tmp_path):
    cams = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 10, 3), 10 * i, np.uint8)).save(p)
        cams.append(Camera(p.name, 10, 10, 10.0, 10.0, 5.0, 5.0, image_path=p))
    cache = ImageCache(max_bytes=2 * 300)
    for c in cams:
        cache.get(c)
    assert len(cache) == 2 and cache.nbytes == 600
    wrong = Camera("0.png", 20, 10, 10.0, 10.0, 10.0, 5.0, image_path=cams[0].image_path)
    with pytest.raises(MiloError, match="aspect"):
        cache.get(wrong)


def test_photos_of_mixed_sizes_load_at_a_small_max_size(tmp_path):
    """Two photo sizes in one dataset at --max-size 64: rounding to whole pixels changed the aspect ratio
    by 1% (201x361 -> 36x64) and the photo was refused as 'replaced or cropped'."""
    from milo_backend.data.dataset import limit_size

    sizes = [(201, 361), (1080, 1920), (361, 201), (33, 97)]
    cams = []
    for i, (w, h) in enumerate(sizes):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((h, w, 3), 20 * i, np.uint8)).save(p)
        cams.append(Camera(p.name, w, h, float(w), float(w), w / 2, h / 2, image_path=p))
    cache = ImageCache()
    for max_size in (16, 64, 128):
        for cam in limit_size(cams, max_size):
            rgb, _ = cache.get(cam)
            assert rgb.shape == (cam.height, cam.width, 3) and max(cam.width, cam.height) <= max_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_image_cache_returns_tensors_on_the_requested_device(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 51, np.uint8)).save(tmp_path / "a.png")
    cam = Camera("a.png", 8, 8, 8.0, 8.0, 4.0, 4.0, image_path=tmp_path / "a.png")
    rgb, alpha = ImageCache().get(cam, device="cuda")
    assert rgb.is_cuda and alpha is None and torch.allclose(rgb, torch.full_like(rgb, 0.2))
