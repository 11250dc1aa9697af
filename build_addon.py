"""Build the Blender extension: dist/milo_blender-<version>.zip.

    python build_addon.py [--out DIR]

The zip holds, at its root: blender_manifest.toml (this folder's, plus the `wheels` list), the code of
milo_blender/, and wheels/ with the pure-Python wheels from ./wheels (plyfile; never numpy, which
Blender ships) and the MILo backend built as a wheel here. The backend wheel is both importable inside
Blender (PLY reading, the event protocol, errors) and what "Set up backend" installs into the backend's
own environment.

The zip is checked with the rules of Blender's validator (scripts/addons_core/bl_pkg/cli/blender_ext.py);
when the `bpy` module is installed, Blender's validator itself also runs on it.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "blender_manifest.toml"
PACKAGE_DIR = ROOT / "milo_blender"
WHEELS_DIR = ROOT / "wheels"
BACKEND_DIR = ROOT / "backend"
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same zip

# -- Blender's manifest rules (blender_ext.py, Blender 4.2-5.0) ------------------------------------------
ADDON_TAGS = {  # scripts/modules/_bpy_internal/extensions/tags.py
    "All", "3D View", "Add Curve", "Add Mesh", "Animation", "Bake", "Camera", "Compositing", "Development",
    "Game Engine", "Geometry Nodes", "Grease Pencil", "Import-Export", "Lighting", "Material", "Mesh",
    "Modeling", "Node", "Object", "Paint", "Physics", "Pipeline", "Render", "Rigging", "Scene", "Sculpt",
    "Sequencer", "System", "Text Editor", "Tracking", "User Interface", "UV"}
PERMISSIONS = {"files", "network", "clipboard", "camera", "microphone"}
TERSE_MAX = 64
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
REQUIRED = {"id": str, "schema_version": str, "name": str, "tagline": str, "version": str, "type": str,
            "maintainer": str, "license": list, "blender_version_min": str}
OPTIONAL = {"blender_version_max": str, "website": str, "copyright": list, "permissions": (dict,), "tags": list,
            "platforms": list, "wheels": list}


class BuildError(Exception):
    pass


def _plain_text_error(value: str) -> str | None:
    if not value.strip():
        return "a non-empty string expected"
    if value != value.strip():
        return "text without leading/trailing white space expected"
    if CONTROL.search(value):
        return "text without any control characters expected"
    return None


def _terse_error(value: str) -> str | None:
    if len(value) > TERSE_MAX:
        return f"a value no longer than {TERSE_MAX} characters expected, found {len(value)}"
    if (error := _plain_text_error(value)) is not None:
        return error
    if not (value[-1].isalnum() or value[-1] in ")]}"):
        return "alphanumeric suffix expected, the string must not end with punctuation"
    return None


def validate_manifest(m: dict) -> list[str]:
    """Every rule Blender's strict validation applies to an add-on manifest; [] when valid."""
    errors = []
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        if key not in m:
            if key in REQUIRED:
                errors.append(f'missing "{key}"')
            continue
        if not isinstance(m[key], kind):
            errors.append(f'"{key}" has the wrong type {type(m[key]).__name__}')
    if errors:
        return errors
    ident = m["id"]
    if not ident.isidentifier() or "__" in ident or ident.startswith("_") or ident.endswith("_"):
        errors.append(f'key "id" invalid: {ident!r} must be a Python identifier without leading, trailing or double "_"')
    for key in ("schema_version", "version"):
        if not SEMVER.match(m[key]):
            errors.append(f'key "{key}" invalid: a semantic version expected, found {m[key]!r}')
    for key in ("name", "maintainer") + (("website",) if "website" in m else ()):
        if (error := _plain_text_error(m[key])) is not None:
            errors.append(f'key "{key}" invalid: {error}')
    if (error := _terse_error(m["tagline"])) is not None:
        errors.append(f'key "tagline" invalid: {error}')
    if m["type"] != "add-on":
        errors.append(f'key "type" invalid: "add-on" expected, found {m["type"]!r}')
    for key in ("blender_version_min", "blender_version_max"):
        value = m.get(key)
        if value and (not all(p.isdigit() for p in value.split(".")) or value.count(".") != 2):
            errors.append(f'key "{key}" invalid: 3 numbers separated by "." expected, found {value!r}')
    for key in ("license", "tags", "platforms"):
        if key in m and (not m[key] or not all(isinstance(v, str) and v.strip() for v in m[key])):
            errors.append(f'key "{key}" invalid: a non-empty list of non-empty strings expected')
    for tag in m.get("tags", []):
        if tag not in ADDON_TAGS:
            errors.append(f'key "tags" invalid: {tag!r} is not one of Blender\'s tags ({", ".join(sorted(ADDON_TAGS))})')
    for key, reason in m.get("permissions", {}).items():
        if key not in PERMISSIONS:
            errors.append(f'key "permissions" invalid: {key!r} is not one of {sorted(PERMISSIONS)}')
        elif not isinstance(reason, str) or (error := _terse_error(reason)) is not None:
            errors.append(f'key "permissions" invalid: value of "{key}": {error if isinstance(reason, str) else "a string expected"}')
    for wheel in m.get("wheels", []):
        name = wheel.rsplit("/", 1)[-1]
        if '"' in wheel or "\\" in wheel or not name.lower().endswith(".whl") or not 5 <= len(name.split("-")) <= 6:
            errors.append(f'key "wheels" invalid: {wheel!r} is not a ./wheels/<name>-<version>-<tags>.whl path')
    return errors


# -- this project's own rules ----------------------------------------------------------------------------
def check_wheel_is_pure(wheel: Path) -> None:
    """Only pure-Python wheels travel (Blender's Python version changes); numpy comes with Blender."""
    parts = wheel.name[:-4].split("-")
    if len(parts) not in (5, 6) or parts[-2:] != ["none", "any"]:
        raise BuildError(f"{wheel.name} is not a pure-Python (py3-none-any) wheel")
    if parts[0].lower() == "numpy":
        raise BuildError("numpy must not be bundled: Blender ships its own")


def build_backend_wheel(out_dir: Path) -> Path:
    """The backend package as a wheel, built from a clean copy (no stale build/ or egg-info)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "backend"
        shutil.copytree(BACKEND_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc"))
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "--disable-pip-version-check", "-q", "-w", str(out_dir), str(src)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"building the backend wheel failed:\n{result.stdout}\n{result.stderr}")
    wheels = sorted(out_dir.glob("milo_backend-*.whl"))
    if not wheels:
        raise BuildError("pip reported success but wrote no milo_backend wheel")
    return wheels[-1]


def manifest_with_wheels(text: str, wheel_names: list[str]) -> str:
    """The manifest text with a top-level `wheels` list (inserted before the first table)."""
    if re.search(r"^\s*wheels\s*=", text, re.M):
        raise BuildError("blender_manifest.toml must not list wheels: build_addon.py adds them")
    line = "wheels = [" + ", ".join(f'"./wheels/{n}"' for n in wheel_names) + "]\n"
    match = re.search(r"^\[", text, re.M)
    pos = match.start() if match else len(text)
    return text[:pos] + line + "\n" + text[pos:]


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo"))


def validate_zip(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        if "blender_manifest.toml" not in names:
            return ["blender_manifest.toml is not at the root of the zip"]
        try:
            manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return [f"blender_manifest.toml: {exc}"]
        errors = validate_manifest(manifest)
        if "__init__.py" not in names:
            errors.append('file missing from add-on: "__init__.py"')
        for wheel in manifest.get("wheels", []):
            if wheel.removeprefix("./") not in names:
                errors.append(f"{wheel} is listed in the manifest but not in the zip")
    return errors


def blender_validator() -> Path | None:
    """Blender's own blender_ext.py from the installed bpy module, if any (not imported: bpy is heavy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        found = sorted(Path(base).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    return None


def run_blender_validator(zip_path: Path) -> tuple[bool, str] | None:
    script = blender_validator()
    if script is None:
        return None
    tags = script.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    result = subprocess.run([sys.executable, str(script), "validate", str(zip_path), f"--valid-tags={tags}"],
                            capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    return result.returncode == 0 and "Success" in output, output


def build(out_dir: Path = ROOT / "dist") -> Path:
    manifest_text = MANIFEST.read_text(encoding="utf-8")
    manifest = tomllib.loads(manifest_text)
    if errors := validate_manifest(manifest):
        raise BuildError("blender_manifest.toml: " + "; ".join(errors))
    vendored = sorted(WHEELS_DIR.glob("*.whl"))
    for wheel in vendored:
        check_wheel_is_pure(wheel)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        backend_wheel = build_backend_wheel(Path(tmp))
        check_wheel_is_pure(backend_wheel)
        wheels = vendored + [backend_wheel]
        text = manifest_with_wheels(manifest_text, [w.name for w in wheels])
        tmp_zip = Path(tmp) / zip_path.name
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            def add(arcname: str, data: bytes) -> None:
                info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)

            add("blender_manifest.toml", text.encode("utf-8"))
            for path in package_files():
                add(path.relative_to(PACKAGE_DIR).as_posix(), path.read_bytes())
            for wheel in wheels:
                add(f"wheels/{wheel.name}", wheel.read_bytes())
        if errors := validate_zip(tmp_zip):
            raise BuildError(f"{zip_path.name}: " + "; ".join(errors))
        blender = run_blender_validator(tmp_zip)
        if blender is not None and not blender[0]:
            raise BuildError(f"Blender's validator rejected {zip_path.name}:\n{blender[1]}")
        shutil.move(str(tmp_zip), zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
