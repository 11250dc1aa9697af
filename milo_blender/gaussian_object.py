"""Gaussian objects in Blender: a mesh whose points carry the 3DGS attributes (f_dc_*, f_rest_*, opacity,
scale_*, rot_*, named like the PLY properties), read and written as numpy arrays. Binding them to a mesh is
`splat_binding`'s business; the display, `splat_display`'s."""
from __future__ import annotations

import bpy
import numpy as np

from milo_backend.errors import MiloError

from .core.splat_frames import Pose, SplatColors

REQUIRED_ATTRIBUTES = ("f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                       "rot_0", "rot_1", "rot_2", "rot_3")
_FIELD = {"FLOAT": "value", "INT": "value", "BOOLEAN": "value", "QUATERNION": "value", "FLOAT_VECTOR": "vector",
          "FLOAT_COLOR": "color"}
_WIDTH = {"FLOAT": 1, "INT": 1, "BOOLEAN": 1, "QUATERNION": 4, "FLOAT_VECTOR": 3, "FLOAT_COLOR": 4}
_DTYPE = {"INT": np.int32, "BOOLEAN": bool}


# ------------------------------------------------------------------------------------------ attributes
def read_attribute(me: bpy.types.Mesh, name: str) -> np.ndarray | None:
    """A point attribute as (n,) or (n, width) numpy array (float32, int32 or bool), None when absent."""
    attr = me.attributes.get(name)
    if attr is None or attr.domain != "POINT" or attr.data_type not in _FIELD:
        return None
    n, width = len(attr.data), _WIDTH[attr.data_type]
    buf = np.empty(n * width, _DTYPE.get(attr.data_type, np.float32))
    attr.data.foreach_get(_FIELD[attr.data_type], buf)
    return buf.reshape(n, width) if width > 1 else buf


def write_attribute(me: bpy.types.Mesh, name: str, data_type: str, values: np.ndarray) -> None:
    attr = me.attributes.get(name)
    if attr is not None and (attr.data_type != data_type or attr.domain != "POINT"):
        me.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = me.attributes.new(name, data_type, "POINT")
    attr.data.foreach_set(_FIELD[data_type], np.ascontiguousarray(values, _DTYPE.get(data_type, np.float32)).ravel())


def remove_attribute(me: bpy.types.Mesh, name: str) -> None:
    attr = me.attributes.get(name)
    if attr is not None:
        me.attributes.remove(attr)


def read_positions(me: bpy.types.Mesh) -> np.ndarray:
    """Vertex positions (V, 3) float32: the fast path (a float32 buffer on the position attribute)."""
    buf = np.empty(len(me.vertices) * 3, np.float32)
    if len(buf):
        me.attributes["position"].data.foreach_get("vector", buf)
    return buf.reshape(-1, 3)


# -------------------------------------------------------------------------------------- Gaussian objects
def is_gaussian_object(obj) -> bool:
    return obj is not None and obj.type == "MESH" and all(n in obj.data.attributes for n in REQUIRED_ATTRIBUTES)


def check_gaussian_object(obj, values: bool = False) -> None:
    """A clear error when `obj` lacks a 3DGS attribute or (`values`) holds a non-finite one, naming it."""
    if obj is None:
        raise MiloError("no Gaussian splat object given", hint="select the imported Gaussians")
    if not is_gaussian_object(obj):
        missing = [n for n in REQUIRED_ATTRIBUTES if obj.type != "MESH" or n not in obj.data.attributes]
        raise MiloError(f"'{obj.name}' is not a Gaussian splat object (it lacks {', '.join(missing[:4])}...)",
                        hint="select the Gaussians imported with File > Import > MILo Result / Gaussian Splats")
    if values:
        for name in ("position",) + REQUIRED_ATTRIBUTES:
            data = read_positions(obj.data) if name == "position" else read_attribute(obj.data, name)
            if data is None:
                raise MiloError(f"'{obj.name}': the attribute '{name}' is not a float point attribute",
                                hint="re-import the Gaussians (File > Import > MILo Result / Gaussian Splats)")
            bad = int((~np.isfinite(data)).reshape(len(data), -1).any(axis=1).sum())
            if bad:
                raise MiloError(f"'{obj.name}': the attribute '{name}' is not finite (NaN or infinite) for {bad} "
                                f"of {len(data)} splats", hint="re-import the Gaussians, or delete those splats")


def read_colors(me: bpy.types.Mesh) -> SplatColors:
    """The colour attributes (as stored: f_rest in the rest frame of a binding)."""
    n_rest = 0
    while f"f_rest_{n_rest}" in me.attributes:
        n_rest += 1
    n_rest -= n_rest % 3
    n = len(me.vertices)
    f_rest = np.stack([read_attribute(me, f"f_rest_{i}") for i in range(n_rest)]) if n_rest else \
        np.zeros((0, n), np.float32)
    return SplatColors(f_dc=np.stack([read_attribute(me, f"f_dc_{c}") for c in range(3)]), f_rest=f_rest,
                       opacity=read_attribute(me, "opacity"))


def stored_pose(me: bpy.types.Mesh) -> Pose:
    """Centres, rotations and scales as the Gaussian object holds them now (its own space)."""
    quats = np.stack([read_attribute(me, f"rot_{i}") for i in range(4)], axis=1)
    log_scales = np.stack([read_attribute(me, f"scale_{i}") for i in range(3)], axis=1)
    return Pose(read_positions(me), quats, log_scales)


def write_pose(me: bpy.types.Mesh, pose: Pose) -> None:
    me.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(pose.means, np.float32).ravel())
    for i in range(4):
        me.attributes[f"rot_{i}"].data.foreach_set("value", np.ascontiguousarray(pose.quats[:, i], np.float32))
    for i in range(3):
        me.attributes[f"scale_{i}"].data.foreach_set("value",
                                                     np.ascontiguousarray(pose.log_scales[:, i], np.float32))
    me.update()
