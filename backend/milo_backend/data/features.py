"""pycolmap plumbing shared by structure from motion and by triangulation from known poses: a staging
folder of safely named images, a feature database with one camera per intrinsics group, feature
extraction and pair matching in chunks (so long blocking pycolmap calls still report progress).

Why staging: COLMAP's pair lists are space-separated text, and image names are its keys; copying (or
linking) the photos under names like "000001.jpg" makes spaces, non-ASCII names and files from several
folders all safe. The original names are kept by the callers.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pycolmap

from milo_backend.atomic import require_free_space
from milo_backend.events import Reporter


@dataclass
class SfmOptions:
    """Speed/robustness trade-offs of structure from motion (measured in bench/sfm.py, BENCHMARKS.md).

    Defaults: SIFT on images downscaled to 1024 px (longest side) with at most 2048 features per image
    (COLMAP's "low quality" preset is 1000 px / 2048), exhaustive matching. On the 50 fox photos this
    registers 50/50 with the same pose accuracy as 1280 px (and as COLMAP's defaults, within the reference's
    own principal-point offset) in ~2 min of a shared 2-core machine, ~126 CPU-seconds; COLMAP's defaults
    (full resolution, 8192 features) take 10.5 min. Matching every pair (up to `exhaustive_max_images`
    photos) works for photos in any order; beyond that each photo is matched with its `sequential_overlap`
    neighbours in name order plus quadratically spaced ones (videos, walk-arounds).

    Reproducibility: with `num_threads=1` and a fixed `seed` two runs give bit-identical cameras and points
    (COLMAP is deterministic only single-threaded); with more threads feature matching and bundle adjustment
    finish in a different order and a run may differ by a few points and sub-pixel pose changes.
    """

    max_image_size: int = 1024
    max_num_features: int = 2048
    exhaustive_max_images: int = 200
    sequential_overlap: int = 12
    camera_model: str = "SIMPLE_RADIAL"   # per photo size; undistorted afterwards
    num_threads: int = -1                 # -1: all cores
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def colmap_log_level(level: int = 2) -> Iterator[None]:
    """Silence COLMAP's glog chatter on stderr (2 = errors only); our reporter says what happens."""
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = level
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- staging ------------------------------------------------------------------------------------
def staged_name(index: int, source: Path) -> str:
    return f"{index:06d}{source.suffix.lower()}"


def link_or_copy(source: Path, target: Path) -> None:
    """Symlink `target` -> `source`, or copy where links are not allowed (e.g. Windows without rights)."""
    target.unlink(missing_ok=True)
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)


# -- database and extraction --------------------------------------------------------------------
# Photos whose longest side (after the `max_image_size` cap) is below this are "small": structure from
# motion also tries SIFT on 4x upsampled photos (`upsample`), see `sfm.run_sfm`.
SMALL_PHOTO_PX = 320


def small_photos(longest_side: int, options: SfmOptions) -> bool:
    return min(longest_side, options.max_image_size) < SMALL_PHOTO_PX


def extraction_options(options: SfmOptions, upsample: bool = False) -> pycolmap.FeatureExtractionOptions:
    """SIFT options; `upsample`: the first octave at 4x the photo's size instead of COLMAP's 2x."""
    eo = pycolmap.FeatureExtractionOptions()
    eo.max_image_size = options.max_image_size
    eo.sift.max_num_features = options.max_num_features
    eo.num_threads = options.num_threads
    if upsample:
        eo.sift.first_octave = -2
    return eo


def extract_features(db_path: Path, image_dir: Path, groups: Sequence[tuple[pycolmap.Camera, list[str]]],
                     options: SfmOptions, reporter: Reporter, stage: str, step0: int = 0,
                     total: int | None = None, upsample: bool = False) -> None:
    """Write one camera per group into a new database, then extract SIFT features of its images.

    Cameras are created here rather than by COLMAP, which in its AUTO mode gave each of the 50 fox photos
    its own camera (50 focal lengths to estimate instead of one).
    """
    n_images = sum(len(names) for _, names in groups)
    # keypoints, descriptors and matches, generously: SQLite aborts the process when the disk fills up
    db_path.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(db_path.parent, (2 << 20) + n_images * 2 * options.max_num_features * 152,
                       f"the feature database of {n_images} images")
    db = pycolmap.Database.open(db_path)
    camera_ids = [db.write_camera(cam) for cam, _ in groups]
    db.close()
    total = total if total is not None else n_images
    done = 0
    eo = extraction_options(options, upsample)
    for camera_id, (_, names) in zip(camera_ids, groups):
        reader = pycolmap.ImageReaderOptions()
        reader.existing_camera_id = camera_id
        # Register the images first, in our order: the multi-threaded extractor would otherwise number them
        # in completion order, and different image ids make the mapper (and so the result) differ run to run.
        pycolmap.import_images(db_path, image_dir, camera_mode=pycolmap.CameraMode.SINGLE, image_names=list(names),
                               options=reader)
        for chunk in chunks(names, 4 * (os.cpu_count() or 2)):
            pycolmap.extract_features(db_path, image_dir, image_names=list(chunk),
                                      camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                      extraction_options=eo)
            done += len(chunk)
            reporter.progress(stage, step0 + done, total)
    db = pycolmap.Database.open(db_path)
    without = [im.name for im in db.read_all_images() if db.num_keypoints_for_image(im.image_id) == 0]
    db.close()
    if without:
        reporter.log(f"no features found in {len(without)} image(s)")


# -- pairs and matching -------------------------------------------------------------------------
def exhaustive_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(names, 2))


def sequential_pairs(names: Sequence[str], overlap: int) -> list[tuple[str, str]]:
    """Each image with its `overlap` successors and with successors 2^k apart (as COLMAP's sequential
    matcher with quadratic overlap), so loops of a walk-around still get some pairs."""
    pairs = set()
    n = len(names)
    for i in range(n):
        steps = set(range(1, overlap + 1)) | {2 ** k for k in range(int(np.log2(max(n, 2))) + 1)}
        pairs.update((names[i], names[i + s]) for s in steps if i + s < n)
    return sorted(pairs)


def pose_neighbour_pairs(names: Sequence[str], centers: np.ndarray, directions: np.ndarray,
                         k: int = 12, max_angle_deg: float = 75.0) -> list[tuple[str, str]]:
    """With known poses: each camera with its k nearest cameras (by centre distance) that look roughly
    the same way (viewing directions within max_angle_deg)."""
    d = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cos = directions @ directions.T
    d[cos < np.cos(np.radians(max_angle_deg))] = np.inf
    np.fill_diagonal(d, np.inf)
    pairs = set()
    for i in range(len(names)):
        for j in np.argsort(d[i], kind="stable")[:k]:
            if np.isfinite(d[i, j]):
                pairs.add((names[min(i, j)], names[max(i, j)]))
    return sorted(pairs)


def match_pairs(db_path: Path, pairs: Sequence[tuple[str, str]], work_dir: Path, options: SfmOptions,
                reporter: Reporter, stage: str, chunk_size: int = 150) -> None:
    """Match and geometrically verify the given image pairs, a chunk at a time (progress per chunk)."""
    mo = pycolmap.FeatureMatchingOptions()
    mo.num_threads = options.num_threads
    vo = pycolmap.TwoViewGeometryOptions()
    vo.ransac.random_seed = options.seed
    pairs_file = work_dir / "pairs.txt"
    for i, chunk in enumerate(chunks(list(pairs), chunk_size)):
        pairs_file.write_text("".join(f"{a} {b}\n" for a, b in chunk), encoding="utf-8")
        po = pycolmap.ImportedPairingOptions()
        po.match_list_path = str(pairs_file)
        pycolmap.match_image_pairs(db_path, matching_options=mo, pairing_options=po, verification_options=vo)
        reporter.progress(stage, min((i + 1) * chunk_size, len(pairs)), len(pairs))
    pairs_file.unlink(missing_ok=True)
