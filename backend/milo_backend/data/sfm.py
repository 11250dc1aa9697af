"""Structure from motion: a folder of photos -> a COLMAP dataset (undistorted images/ + sparse/0).

    prepare (decode every photo: EXIF rotation, 8-bit RGB, skip corrupt ones) -> sfm:features ->
    sfm:matching -> sfm:mapping (incremental, keep the largest model) -> sfm:undistort

Small photos (longest side under `features.SMALL_PHOTO_PX`) go through features, matching and mapping a
second time with SIFT on 4x upsampled photos, and the better of the two models is kept (`_model_rank`).

The result folder is reused when `sfm.json` in it says it was made from the same photos with the same
options (resume). Timings and registration figures are recorded in that file (the benchmark reads them).
"""
from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pycolmap

from milo_backend.atomic import write_json
from milo_backend.data.camera import Camera
from milo_backend.data.features import (SfmOptions, colmap_log_level, exhaustive_pairs, extract_features,
                                        link_or_copy, match_pairs, sequential_pairs, small_photos, staged_name)
from milo_backend.data.images import (focal_35mm, image_size, is_plain_8bit, list_images, open_image,
                                      pil_to_arrays, save_image)
from milo_backend.data.undistort import colmap_camera, output_names, pinhole_for, undistort_views
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter, Reporter

__all__ = ["SfmOptions", "run_sfm", "sfm_is_done", "MANIFEST"]

MANIFEST = "sfm.json"
MIN_PHOTOS = 3
DEFAULT_FOCAL_FACTOR = 1.2  # focal prior = 1.2 x longest side without EXIF (COLMAP's default)
NO_MODEL_HINT = ("Structure from motion needs photos that overlap a lot (each part of the object seen in "
                 "3+ photos from slightly different angles, ~60-80% overlap between neighbours), with texture "
                 "(not blank walls, glass or mirrors), sharp (no motion blur) and of a static scene: avoid "
                 "moving people, animals or shadows, and zoom changes. A small object in small photos gives too "
                 "few features: use larger photos, or give the camera poses (a COLMAP model or transforms.json).")


class StageClock:
    """Wall and CPU seconds per sub-stage. CPU time (all threads) does not grow when other processes share
    the cores, so it shows what a run costs on an idle machine (about CPU / cores for parallel stages)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark()

    def _mark(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        self.wall[stage] = round(self.wall.get(stage, 0.0) + time.perf_counter() - self._wall0, 2)
        self.cpu[stage] = round(self.cpu.get(stage, 0.0) + time.process_time() - self._cpu0, 2)
        self._mark()


def _inputs_signature(photos: list[Path]) -> list[dict]:
    return [{"name": p.name, "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in photos]


def sfm_is_done(images_dir: Path, out_dir: Path, options: SfmOptions) -> bool:
    """True when out_dir holds a finished SfM of exactly these photos with these options."""
    manifest = out_dir / MANIFEST
    if not manifest.exists() or not (out_dir / "sparse" / "0").is_dir():
        return False
    try:
        done = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (done.get("inputs") == _inputs_signature(list_images(images_dir))
            and done.get("options") == options.to_json())


def _prepare_photos(photos: list[Path], staged_dir: Path, reporter: Reporter, stage: str,
                    total_steps: int) -> tuple[list[tuple[Path, str]], list[str]]:
    """Decode every photo (this is where corrupt/truncated files show up) and stage an 8-bit, upright copy
    (or a link to the original when it is already one) under a safe name. Returns [(source, staged name)]
    and the names skipped."""
    staged_dir.mkdir(parents=True, exist_ok=True)
    kept, skipped = [], []
    for i, photo in enumerate(photos):
        try:
            im = open_image(photo)
        except MiloError as err:
            skipped.append(photo.name)
            reporter.warning(f"Skipping {photo.name}: {err.message}", hint=err.hint)
            continue
        if is_plain_8bit(photo):
            name = staged_name(i, photo)
            link_or_copy(photo, staged_dir / name)
        else:  # rotated, 16-bit, palette, alpha, TIFF/BMP/WebP...: one normalised 8-bit RGB PNG
            name = f"{i:06d}.png"
            save_image(staged_dir / name, pil_to_arrays(im)[0])
        kept.append((photo, name))
        reporter.progress(stage, i + 1, total_steps)
    return kept, skipped


def _camera_groups(kept: list[tuple[Path, str]], camera_model: str) -> list[tuple[pycolmap.Camera, list[str]]]:
    """One camera per (image size, EXIF focal): mixed image sizes get their own intrinsics."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for source, name in kept:
        w, h = image_size(source)
        f35 = focal_35mm(source)
        groups[(w, h, f35)].append(name)
    cameras = []
    for (w, h, f35), names in groups.items():
        focal = f35 / 36.0 * max(w, h) if f35 else DEFAULT_FOCAL_FACTOR * max(w, h)
        cam = pycolmap.Camera.create_from_model_name(0, camera_model, focal, w, h)
        cam.has_prior_focal_length = bool(f35)
        cameras.append((cam, names))
    return cameras


def _mapper_options(options: SfmOptions, small: bool = False) -> pycolmap.IncrementalPipelineOptions:
    mo = pycolmap.IncrementalPipelineOptions()
    mo.num_threads = options.num_threads
    mo.random_seed = options.seed
    mo.min_model_size = MIN_PHOTOS
    if small:
        # COLMAP's 100 / 30 inliers assume thousands of features per photo; a small photo has hundreds
        mo.mapper.init_min_num_inliers = 50
        mo.mapper.abs_pose_min_num_inliers = 15
    return mo


def _undistorted_reconstruction(rec: pycolmap.Reconstruction, names: dict[str, str]) -> pycolmap.Reconstruction:
    """`rec` with PINHOLE cameras (those of `pinhole_for`), undistorted keypoints and the final image names,
    built afresh so the written model is self-consistent (tracks, reprojection errors) like COLMAP's
    undistorter output."""
    out = pycolmap.Reconstruction()
    pinholes = {cid: pinhole_for(cam) for cid, cam in rec.cameras.items()}
    for cid, pin in pinholes.items():
        out.add_camera_with_trivial_rig(pin)
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        cam, pin = rec.cameras[image.camera_id], pinholes[image.camera_id]
        xy = np.array([p.xy for p in image.points2D], dtype=np.float64).reshape(-1, 2)
        if len(xy):
            rays = cam.cam_from_img(xy)
            xy = pin.img_from_cam(np.concatenate([rays, np.ones((len(rays), 1))], axis=1), check_cheirality=False)
        new = pycolmap.Image(name=names[image.name], keypoints=xy, camera_id=image.camera_id, image_id=image_id)
        out.add_image_with_trivial_frame(new, image.cam_from_world())
    for pid, point in rec.points3D.items():
        track = pycolmap.Track()
        for el in point.track.elements:
            if out.exists_image(el.image_id):
                track.add_element(el.image_id, el.point2D_idx)
        if track.length() >= 2:
            out.add_point3D(point.xyz, track, point.color)
    return out


def _reconstruct(work: Path, staged_dir: Path, groups: list, names: list[str], n_photos: int, options: SfmOptions,
                 small: bool, reporter: Reporter, clock: "StageClock") -> pycolmap.Reconstruction | None:
    """Features, matching and incremental mapping of the staged photos in `work`; the largest model, or
    None. `small`: SIFT on 4x upsampled photos and the mapper's thresholds for few features. The features
    bar continues the reading of all `n_photos` (reading is its first half)."""
    db_path, distorted_dir = work / "database.db", work / "distorted"
    n = len(names)
    if small:
        reporter.stage("sfm:features", "Detecting features on the photos upsampled 4x")
    extract_features(db_path, staged_dir, groups, options, reporter, "sfm:features", step0=n_photos,
                     total=2 * n_photos, upsample=small)
    if n < n_photos:  # photos skipped as unreadable: the bar still ends at 100%
        reporter.progress("sfm:features", 2 * n_photos, 2 * n_photos)
    clock.lap("features")
    exhaustive = n <= options.exhaustive_max_images
    pairs = exhaustive_pairs(names) if exhaustive else sequential_pairs(names, options.sequential_overlap)
    reporter.stage("sfm:matching", f"Matching {len(pairs)} image pairs "
                                   f"({'exhaustive' if exhaustive else 'sequential, in file-name order'})")
    match_pairs(db_path, pairs, work, options, reporter, "sfm:matching")
    clock.lap("matching")
    reporter.stage("sfm:mapping", "Estimating camera poses")
    distorted_dir.mkdir(parents=True, exist_ok=True)
    registered = [0]

    def next_image() -> None:
        registered[0] += 1
        reporter.progress("sfm:mapping", min(registered[0] + 1, n), n)

    models = pycolmap.incremental_mapping(db_path, staged_dir, distorted_dir,
                                          options=_mapper_options(options, small), next_image_callback=next_image)
    clock.lap("mapping")
    db_path.unlink(missing_ok=True)
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))  # the largest


def _model_rank(rec: pycolmap.Reconstruction) -> tuple:
    """Larger is better: more photos placed, then a lower mean reprojection error."""
    return rec.num_reg_images(), -rec.compute_mean_reprojection_error()


def run_sfm(images_dir: str | Path, out_dir: str | Path, reporter: Reporter | None = None,
            options: SfmOptions | None = None) -> Path:
    """Cameras and sparse points for the photos in `images_dir`; returns `out_dir`, a COLMAP dataset with
    undistorted `images/` and `sparse/0`. Raises MiloError when fewer than 3 photos are usable or when no
    model can be built; photos that do not register are left out with a warning."""
    reporter = reporter or NullReporter()
    options = options or SfmOptions()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    photos = list_images(images_dir)
    if len(photos) < MIN_PHOTOS:
        raise MiloError(f"Found {len(photos)} photo(s) in {images_dir}; structure from motion needs at least "
                        f"{MIN_PHOTOS} (30-200 work best)", hint="Add more overlapping photos of the object.",
                        path=images_dir)
    if sfm_is_done(images_dir, out_dir, options):
        reporter.log(f"Reusing the finished structure from motion in {out_dir}")
        return out_dir

    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    staged_dir = work / "images"
    clock = StageClock()
    pycolmap.set_random_seed(options.seed)
    with colmap_log_level():
        # -- features (incl. reading every photo once) ----------------------------------------------
        reporter.stage("sfm:features", f"Reading {len(photos)} photos and detecting features")
        kept, skipped = _prepare_photos(photos, staged_dir, reporter, "sfm:features", 2 * len(photos))
        if len(kept) < MIN_PHOTOS:
            raise MiloError(f"Only {len(kept)} of the {len(photos)} photos in {images_dir} could be read; "
                            f"structure from motion needs at least {MIN_PHOTOS}",
                            hint="Replace the corrupt photos (see the warnings) or add more.", path=images_dir)
        clock.lap("prepare")
        groups = _camera_groups(kept, options.camera_model)
        names = [name for _, name in kept]
        longest = int(np.median([max(cam.width, cam.height) for cam, group in groups for _ in group]))
        rec = _reconstruct(work / "sift2x", staged_dir, groups, names, len(photos), options, False, reporter, clock)
        if small_photos(longest, options):
            # Decision: small photos are reconstructed twice, at SIFT's usual 2x and at 4x with lower inlier
            # thresholds; the model placing more photos wins, then the lower reprojection error. Neither
            # setting is right for every small photo (BENCHMARKS.md, "Structure from motion on small photos").
            reporter.log(f"the photos are small ({longest} px): trying SIFT on 4x upsampled photos as well")
            fine = _reconstruct(work / "sift4x", staged_dir, groups, names, len(photos), options, True, reporter,
                                clock)
            if fine is not None and (rec is None or _model_rank(fine) > _model_rank(rec)):
                rec = fine
        if rec is None:
            raise MiloError(f"Structure from motion found no camera poses for the {len(kept)} photos in "
                            f"{images_dir}", hint=NO_MODEL_HINT, path=images_dir)
        if rec.num_reg_images() < MIN_PHOTOS:
            raise MiloError(f"Structure from motion placed only {rec.num_reg_images()} of the {len(kept)} photos "
                            f"in {images_dir}; training needs at least {MIN_PHOTOS}", hint=NO_MODEL_HINT,
                            path=images_dir)

        # -- undistortion ------------------------------------------------------------------------------
        source_of = {name: src for src, name in kept}
        reg_names = sorted(rec.images[i].name for i in rec.reg_image_ids())
        final = dict(zip(reg_names, output_names([source_of[n].name for n in reg_names])))
        unregistered = sorted(source_of[n].name for n in names if n not in final)
        reporter.log(f"Registered {len(reg_names)}/{len(photos)} photos")
        if unregistered:
            reporter.warning(f"{len(unregistered)} of {len(photos)} photos could not be placed and are left out: "
                             + ", ".join(unregistered[:20]) + (" ..." if len(unregistered) > 20 else ""),
                             hint="They overlap too little with the others; add photos in between, or remove "
                                  "blurry / unrelated ones.")
        views = []
        for image_id in rec.reg_image_ids():
            image = rec.images[image_id]
            w2c = np.eye(4)
            w2c[:3, :4] = image.cam_from_world().matrix()
            cam = rec.cameras[image.camera_id]
            # pixels come from the original photo (EXIF-rotated by load_image exactly as it was staged)
            views.append((Camera(name=source_of[image.name].name, width=cam.width, height=cam.height, fx=0.0,
                                 fy=0.0, cx=0.0, cy=0.0, world_to_cam=w2c, image_path=source_of[image.name]),
                          colmap_camera(cam.model_name, cam.width, cam.height, list(cam.params))))
        images_out = out_dir / "images"
        undistort_views(views, images_out, reporter, stage="sfm:undistort")
        for stale in images_out.glob("*.png"):
            if stale.name not in set(final.values()):
                stale.unlink()
        sparse = out_dir / "sparse" / "0"
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir(parents=True)
        undistorted = _undistorted_reconstruction(rec, final)
        undistorted.write(sparse)
        clock.lap("undistort")

    write_json(out_dir / MANIFEST, {
        "inputs": _inputs_signature(photos), "options": options.to_json(),
        "registered": len(reg_names), "total": len(photos), "unregistered": unregistered, "skipped": skipped,
        "num_points": undistorted.num_points3D(),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
        "timings_s": clock.wall, "cpu_s": clock.cpu, "pycolmap": pycolmap.__version__})
    shutil.rmtree(staged_dir, ignore_errors=True)  # copies of the photos: no longer needed
    return out_dir
