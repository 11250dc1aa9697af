"""Where the extension keeps its files, and how the other modules reach its preferences."""
from __future__ import annotations

import time
from pathlib import Path

import bpy

from .core.backend import resolve_backend_python

PACKAGE = __package__  # bl_ext.<repository>.milo_blender once installed
EXTENSION_DIR = Path(__file__).resolve().parent


def user_dir() -> Path:
    """The extension's writable folder (the extension folder itself is wiped on upgrade)."""
    return Path(bpy.utils.extension_path_user(PACKAGE, create=True))


def managed_venv() -> Path:
    """The environment "Set up backend" creates."""
    return user_dir() / "backend-venv"


def new_log_path(kind: str) -> Path:
    logs = user_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def preferences(context=None):
    return (context or bpy.context).preferences.addons[PACKAGE].preferences


def backend_python(context=None) -> Path:
    """The backend's interpreter (MiloError with the fix when there is none)."""
    return resolve_backend_python(preferences(context).backend_python, managed_venv())
