"""build_addon.py: the extension zip, its wheels, and Blender's manifest rules."""
from __future__ import annotations

import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import build_addon
from milo_blender.core import backend
from milo_blender.core.job import Job, Step


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("dist ü"))


def manifest() -> dict:
    return tomllib.loads(build_addon.MANIFEST.read_text(encoding="utf-8"))


def test_zip_layout(built):
    m = manifest()
    assert built.name == f"milo_blender-{m['version']}.zip"
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        inner = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert {"blender_manifest.toml", "__init__.py", "core/job.py", "operators/reconstruct.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    wheels = [w.removeprefix("./") for w in inner["wheels"]]
    assert all(w in names for w in wheels)
    assert any(w.startswith("wheels/milo_backend-") for w in wheels) and any("plyfile" in w for w in wheels)
    assert all(w.endswith("-none-any.whl") and "numpy" not in w for w in wheels)
    assert inner["permissions"].keys() == {"files", "network"}  # network: only for backend set-up
    assert build_addon.validate_zip(built) == []


def test_only_pure_wheels_travel(tmp_path):
    for bad in ("numpy-2.0.0-py3-none-any.whl", "torch-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl"):
        with pytest.raises(build_addon.BuildError):
            build_addon.check_wheel_is_pure(Path(bad))
    build_addon.check_wheel_is_pure(Path("plyfile-1.1.5-py3-none-any.whl"))


BROKEN = {
    "tagline ends with a full stop": ("tagline", "Photos to a mesh and Gaussian splats."),
    "tagline too long": ("tagline", "x" * 65),
    "free-text tag": ("tags", ["Photogrammetry"]),
    "unknown permission": ("permissions", {"internet": "Downloads things"}),
    "permission reason with punctuation": ("permissions", {"network": "Downloads PyTorch."}),
    "double underscore id": ("id", "milo__blender"),
    "two-number Blender version": ("blender_version_min", "4.2"),
    "missing maintainer": ("maintainer", None),
    "not semver": ("version", "1.0"),
}


def write_zip(path: Path, m: dict) -> Path:
    def toml_value(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        raise TypeError(v)
    lines = [f"{k} = {toml_value(v)}" for k, v in m.items() if not isinstance(v, dict)]
    for k, v in m.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("blender_manifest.toml", "\n".join(lines) + "\n")
        zf.writestr("__init__.py", "")
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_manifest_rules_agree_with_blenders_validator(case, tmp_path):
    key, value = BROKEN[case]
    m = manifest()
    if value is None:
        del m[key]
    else:
        m[key] = value
    assert build_addon.validate_manifest(m), f"{case}: accepted by our rules"
    blender = build_addon.run_blender_validator(write_zip(tmp_path / "broken.zip", m))
    if blender is None:
        pytest.skip("bpy not installed: Blender's validator unavailable")
    assert not blender[0], f"{case}: Blender accepted it, our rules are stricter than Blender's"
    ok = build_addon.run_blender_validator(write_zip(tmp_path / "ok.zip", manifest()))
    assert ok[0], ok[1]


def test_tag_list_is_blenders():
    script = build_addon.blender_validator()
    if script is None:
        pytest.skip("bpy not installed")
    tags_py = script.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    namespace: dict = {}
    exec(tags_py.read_text(encoding="utf-8"), namespace)
    assert build_addon.ADDON_TAGS == namespace["addons"]


def test_bundled_backend_wheel_installs_into_a_fresh_environment(built, tmp_path):
    """What "Set up backend" does with the wheel, offline: a new venv, then the wheel (no dependencies
    here: PyTorch and friends come from the network in real use)."""
    with zipfile.ZipFile(built) as zf:
        zf.extractall(tmp_path / "extension")
    wheel = backend.bundled_backend_wheel(tmp_path / "extension")
    venv = tmp_path / "backend venv ü"
    create = backend.setup_steps(sys.executable, venv, wheel, None, system="Linux")[0]
    py = str(backend.venv_python(venv))
    check = "import milo_backend.events as e, milo_backend.cli; print(e.PROTOCOL_VERSION)"
    job = Job([create,
               Step([py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                     str(wheel)], "Installing the MILo backend", json=False),
               Step([py, "-c", check], "Checking", json=False)]).start()
    state = job.wait(timeout=240)
    assert state.status == "done", (state.message, state.hint)
    assert [e["message"] for e in job.events if e["event"] == "log"][-1] == "1"


def _imported_modules(source: str) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_zip_ships_no_benchmark_code_and_nothing_that_imports_torch(built):
    with zipfile.ZipFile(built) as zf:
        sources = {n: zf.read(n).decode("utf-8") for n in zf.namelist() if n.endswith(".py")}
    assert sources and not any("bench" in Path(n).name for n in sources), sorted(sources)
    for name, source in sources.items():
        bad = {m for m in _imported_modules(source) if m.split(".")[0] == "torch" or m.startswith("milo_backend.bench")}
        assert not bad, f"{name} imports {bad}"


def test_the_extensions_core_loads_without_torch():
    """What the add-on takes from milo_backend (errors, config, run folder, PLY) must not pull torch in."""
    import subprocess

    code = ("import sys, pkgutil, importlib; sys.modules['torch'] = None\n"
            "import milo_blender.core as core\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('milo_blender.core.' + m.name)\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(build_addon.__file__).parent)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
