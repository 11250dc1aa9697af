"""Shared fixtures of the extension tests.

Blender's user folders (installed extensions, preferences) go to a throwaway folder, set here, before
any test module imports bpy: installing an extension changes the bpy module's state for the session.
The folder name has a space and a non-ASCII character, as users' home folders do.
"""
from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="milo blender ü ")
atexit.register(shutil.rmtree, os.environ["BLENDER_USER_RESOURCES"], ignore_errors=True)


@pytest.fixture(scope="session")
def fake_python(tmp_path_factory) -> Path:
    """An executable that behaves like `python -m milo_backend` (see fake_backend.py)."""
    folder = tmp_path_factory.mktemp("fake backend ü")
    exe = folder / "python"
    exe.write_text(f"#!{sys.executable}\n" + (HERE / "fake_backend.py").read_text(encoding="utf-8"), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "my photos é"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(folder / f"IMG {i}.png")
    return folder
