"""The compiled CPU kernels' build and fallback: a machine without a compiler, or a failed build, runs the
torch code and says why (the kernels' results are tested against torch in the renderer and raster tests)."""
import os
import shutil
import sys

import torch

from milo_backend import cpu_kernels
from milo_backend.bench.render import random_scene
from milo_backend.render import render


def test_without_a_compiler_the_torch_code_runs_and_says_why(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_STATE", None)
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    assert cpu_kernels.predict().active == "torch" and "no C++ compiler" in cpu_kernels.predict().why
    assert not cpu_kernels.available()
    splats, camera = random_scene(200, 32, 24, seed=2)
    out = render(splats, camera, sh_degree=3, backend="torch")
    assert out.alpha.max() > 0.5 and torch.isfinite(out.color).all()


def test_a_failed_build_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_STATE", None)
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(cpu_kernels, "_ninja_on_path", lambda: True)

    def broken(say):
        raise RuntimeError("error: 'omp.h' file not found")
    monkeypatch.setattr(cpu_kernels, "_build", broken)
    said = []
    state = cpu_kernels.state(say=said.append)
    assert state.active == "torch" and "omp.h" in state.why and "torch code runs" in state.why
    assert any(m.startswith("Warning:") and "omp.h" in m for m in said)
    assert not cpu_kernels.available()


def test_the_environment_variable_asks_for_the_torch_code(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_STATE", None)
    monkeypatch.setenv(cpu_kernels.ENV, "torch")
    assert cpu_kernels.predict().active == "torch" and cpu_kernels.ENV in cpu_kernels.predict().why


def test_the_build_folder_follows_the_sources_not_the_install(tmp_path, monkeypatch):
    # two installs of the same code share one build; changed code gets a folder of its own
    monkeypatch.setenv("MILO_KERNEL_CACHE", str(tmp_path / "cache"))
    here = cpu_kernels.build_directory(["-O3"])
    copies = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for src in cpu_kernels.SOURCES:
            (folder / src.name).write_bytes(src.read_bytes())
        copies.append([folder / src.name for src in cpu_kernels.SOURCES])
    monkeypatch.setattr(cpu_kernels, "SOURCES", copies[0])
    assert cpu_kernels.build_directory(["-O3"]) == here and here.parent == tmp_path / "cache"
    monkeypatch.setattr(cpu_kernels, "SOURCES", copies[1])
    copies[1][1].write_bytes(copies[1][1].read_bytes() + b"\n// changed\n")
    assert cpu_kernels.build_directory(["-O3"]) != here


def test_two_venvs_keep_a_build_each(tmp_path, monkeypatch):
    """The build file names torch's include folders: sharing one folder, two venvs rebuilt it in turn."""
    monkeypatch.setenv("MILO_KERNEL_CACHE", str(tmp_path))
    here = cpu_kernels.build_directory(["-O3"])
    monkeypatch.setattr(cpu_kernels, "torch_folder", lambda: str(tmp_path / "other venv" / "torch"))
    assert cpu_kernels.build_directory(["-O3"]) != here


def _fake_program(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_build_uses_the_interpreters_own_ninja_first(tmp_path, monkeypatch):
    # two ninja versions read each other's build logs as stale: the same build was redone from scratch
    # (about a minute) whenever the venv was used activated, then not, then activated again
    system_ninja = _fake_program(tmp_path / "system bin", "ninja")
    own_ninja = _fake_program(tmp_path / "venv bin", "ninja")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv bin" / "python"))
    monkeypatch.setenv("PATH", str(system_ninja.parent))
    assert cpu_kernels._ninja_on_path()
    assert shutil.which("ninja") == str(own_ninja)
    assert cpu_kernels._ninja_on_path() and shutil.which("ninja") == str(own_ninja)
    assert os.environ["PATH"].count("venv bin") == 1  # not prepended again


def test_without_an_own_ninja_the_one_on_path_serves(tmp_path, monkeypatch):
    system_ninja = _fake_program(tmp_path / "system bin", "ninja")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bare" / "python"))
    monkeypatch.setenv("PATH", str(system_ninja.parent))
    assert cpu_kernels._ninja_on_path() and shutil.which("ninja") == str(system_ninja)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing here"))
    assert not cpu_kernels._ninja_on_path()
