"""Build the offline GPU check kit in `.gpu_kit/` (run on a machine with internet; `bash run.sh gpu-kit`).

The GPU machine that runs `bash run.sh gpu-check` reaches no package registry and receives at most
64 MiB: the working tree plus what is carried. The kit holds:
- `wheels/`: the backend's own wheel and the packages the GPU machine lacks, as wheels for its Python
  (cp312, manylinux x86-64): gsplat (CUDA sources, JIT-built there), diffrp-nvdiffrast, shull, plyfile,
  pytorch-msssim, and pycolmap when it fits (the fox's known poses are triangulated with it);
- `fox_half/`: the fox photos at half resolution with their transforms.json (intrinsics are rescaled
  to the image size by the loader);
- `manifest.json`: every file with its size, and the budget check.
The CUDA extensions are not prebuilt here: a build for sm_90 against the device's torch 2.11+cu130
would need that torch (several GB) and does not fit beside pycolmap; the device builds them with 16
cores in `setup-gpu`, and the check reports how long that took.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".gpu_kit"
LIMIT = 64 * 2**20          # what one device call may send, working tree included
HEADROOM = 2 * 2**20        # for files written between the build and the call (notes, logs)
PYTHON = "3.12"             # the GPU machine's Python
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]
# packages the GPU machine lacks (it has torch, numpy, scipy, pillow, matplotlib, tqdm, ninja, jaxtyping,
# rich); pinned to the versions this machine tests with, when it has them
NEEDED = ["gsplat", "diffrp-nvdiffrast", "shull", "plyfile", "pytorch-msssim"]
OPTIONAL = ["pycolmap"]     # taken only if the budget allows
FOX = ROOT.parent / "shared" / "data" / "fox"


def pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def tree_bytes(root: Path = ROOT, kit: Path = KIT) -> int:
    """Bytes of the working tree a device call sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, check=True).stdout.decode()
    total = 0
    for name in filter(None, out.split("\0")):
        path = root / name
        if path.is_file() and kit not in path.parents:
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_budget(tree: int, kit: int, limit: int = LIMIT, headroom: int = HEADROOM) -> None:
    """Refuse a kit that would not travel, naming the sizes."""
    if tree + kit + headroom > limit:
        raise SystemExit(f"the kit does not fit: working tree {tree / 2**20:.1f} MiB + kit {kit / 2**20:.1f} MiB "
                         f"+ headroom {headroom / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB; drop the optional "
                         f"packages (--no-pycolmap) or shrink the fox (--fox-scale)")


def download(spec: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
           "--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "-d", str(dest), spec]
    for plat in PLATFORMS + ["any"]:
        cmd[-1:-1] = ["--platform", plat]
    subprocess.run(cmd, check=True)
    new = set(dest.glob("*.whl")) - before
    name = spec.split("==")[0].replace("-", "_").lower()
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-"))
    return (sorted(new) or found)[-1]


def backend_wheel(dest: Path) -> Path:
    for old in dest.glob("milo_backend-*.whl"):
        old.unlink()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(dest), str(ROOT / "backend")], check=True)
    finally:  # setuptools leaves its build folder in the source tree
        shutil.rmtree(ROOT / "backend" / "build", ignore_errors=True)
    return next(dest.glob("milo_backend-*.whl"))


def half_fox(src: Path, dest: Path, scale: float) -> int:
    """The fox photos at `scale` of their size, and their transforms.json; returns the photo count."""
    from PIL import Image

    if not (src / "transforms.json").is_file():
        raise SystemExit(f"no fox dataset at {src} (transforms.json missing); pass --fox PATH")
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    shutil.copy2(src / "transforms.json", dest / "transforms.json")
    photos = sorted((src / "images").glob("*.jpg"))
    for photo in photos:
        with Image.open(photo) as im:
            small = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
            small.save(dest / "images" / photo.name, quality=92)
    return len(photos)


def build(kit: Path = KIT, fox: Path = FOX, fox_scale: float = 0.5, with_pycolmap: bool = True) -> dict:
    wheels = kit / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for stale in wheels.glob("*.whl"):
        stale.unlink()
    files = {"backend": backend_wheel(wheels).name}
    for name in NEEDED:
        files[name] = download(pinned(name), wheels).name
    photos = half_fox(fox, kit / "fox_half", fox_scale)
    tree = tree_bytes(kit=kit)
    left_out = []
    for name in OPTIONAL:
        if not with_pycolmap:
            left_out.append(f"{name} (--no-pycolmap)")
            continue
        wheel = wheels / download(pinned(name), wheels).name
        if tree + folder_bytes(kit) + HEADROOM > LIMIT:
            size = wheel.stat().st_size
            wheel.unlink()
            left_out.append(f"{name} ({size / 2**20:.1f} MiB did not fit)")
        else:
            files[name] = wheel.name
    total = folder_bytes(kit)
    check_budget(tree, total)
    manifest = {"python": PYTHON, "wheels": files, "left_out": left_out, "fox_photos": photos,
                "fox_scale": fox_scale, "kit_bytes": total, "tree_bytes": tree, "limit_bytes": LIMIT,
                "sizes": {p.relative_to(kit).as_posix(): p.stat().st_size for p in sorted(wheels.glob("*.whl"))}}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kit", type=Path, default=KIT)
    ap.add_argument("--fox", type=Path, default=FOX)
    ap.add_argument("--fox-scale", type=float, default=0.5)
    ap.add_argument("--no-pycolmap", action="store_true")
    args = ap.parse_args(argv)
    m = build(args.kit, args.fox, args.fox_scale, not args.no_pycolmap)
    print(f"kit: {m['kit_bytes'] / 2**20:.1f} MiB + working tree {m['tree_bytes'] / 2**20:.1f} MiB "
          f"of {m['limit_bytes'] / 2**20:.0f} MiB; wheels: {', '.join(m['wheels'].values())}"
          + (f"; left out: {', '.join(m['left_out'])}" if m["left_out"] else ""))


if __name__ == "__main__":
    main()
