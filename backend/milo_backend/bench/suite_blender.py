"""Builds and renders one suite scene in Blender (`bpy`); run as a child process by `suite_scenes.py`:

    python -m milo_backend.bench.suite_blender JOB.json

JOB.json holds the scene description, the cameras (OpenCV cam-to-world matrices, field of view, size)
and the output folder. Writes `images/NAME.png` per camera, `objects.obj` (the scored objects in world
coordinates, modifiers applied) and `crop.json` (the evaluation box). Only this module imports bpy.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _material(name: str, colors, scale: float = 4.0, seed: float = 0.0, emission: bool = False,
              checker: bool = False):
    """A procedural material in object coordinates (so its scale is in world units): a 3-colour noise
    ramp with Voronoi speckles (the detail that matching and training need), or a checkerboard."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    coord = nodes.new("ShaderNodeTexCoord")
    if checker:
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = scale
        tex.inputs["Color1"].default_value = (*colors[0], 1)
        tex.inputs["Color2"].default_value = (*colors[1], 1)
        links.new(coord.outputs["Object"], tex.inputs["Vector"])
        color = tex.outputs["Color"]
    else:
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = scale
        noise.inputs["Detail"].default_value = 6.0
        noise.noise_dimensions = "4D"
        noise.inputs["W"].default_value = seed
        links.new(coord.outputs["Object"], noise.inputs["Vector"])
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].position = 0.42
        ramp.color_ramp.elements[0].color = (*colors[0], 1)
        ramp.color_ramp.elements[1].position = 0.58
        ramp.color_ramp.elements[1].color = (*colors[1], 1)
        links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
        vor = nodes.new("ShaderNodeTexVoronoi")
        vor.inputs["Scale"].default_value = scale * 2.0
        links.new(coord.outputs["Object"], vor.inputs["Vector"])
        speck = nodes.new("ShaderNodeMath")
        speck.operation = "LESS_THAN"
        speck.inputs[1].default_value = 0.2
        links.new(vor.outputs["Distance"], speck.inputs[0])
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        mix.inputs["B"].default_value = (*colors[2], 1)
        links.new(speck.outputs[0], mix.inputs["Factor"])
        links.new(ramp.outputs["Color"], mix.inputs["A"])
        color = mix.outputs["Result"]
    if emission:
        shader = nodes.new("ShaderNodeEmission")
        links.new(color, shader.inputs["Color"])
    else:
        shader = nodes.new("ShaderNodeBsdfPrincipled")
        shader.inputs["Roughness"].default_value = 0.7
        links.new(color, shader.inputs["Base Color"])
    links.new(shader.outputs[0], out.inputs["Surface"])
    return mat


def _assign(obj, mat):
    obj.data.materials.clear()
    obj.data.materials.append(mat)
    return obj


def _smooth(obj, subdivisions: int = 0):
    if subdivisions:
        mod = obj.modifiers.new("subsurf", "SUBSURF")
        mod.levels = mod.render_levels = subdivisions
    for poly in obj.data.polygons:
        poly.use_smooth = True
    return obj


def _add(op, **kw):
    op(**kw)
    return bpy.context.active_object


def _bunny(path: str):
    from milo_backend.data.mesh_scene import normalised_mesh

    verts, faces = normalised_mesh(path)
    mesh = bpy.data.meshes.new("bunny")
    mesh.from_pydata((verts * 0.9).tolist(), [], faces.tolist())
    obj = bpy.data.objects.new("bunny", mesh)
    bpy.context.collection.objects.link(obj)
    return _smooth(obj)


def build_objects(name: str, bunny: str | None) -> list:
    """The scored objects of scene `name`, placed on z = 0 where the scene has a ground."""
    warm = [(0.75, 0.2, 0.12), (0.95, 0.75, 0.3), (0.1, 0.05, 0.25)]
    cool = [(0.12, 0.3, 0.7), (0.55, 0.85, 0.8), (0.95, 0.95, 0.9)]
    green = [(0.15, 0.45, 0.15), (0.8, 0.85, 0.35), (0.05, 0.1, 0.05)]
    mesh = bpy.ops.mesh
    if name == "ground":
        monkey = _smooth(_add(mesh.primitive_monkey_add, size=1.3), 2)
        monkey.rotation_euler = (math.radians(-10), 0.0, math.radians(35))
        bpy.context.view_layer.update()
        _rest_on_ground(monkey)
        return [_assign(monkey, _material("monkey", warm, 5.0, 1.0))]
    if name == "dome":
        return [_assign(_bunny(bunny), _material("bunny", warm, 5.0, 2.0))]
    if name == "thin":
        mat = _material("wire", cool, 12.0, 3.0)
        ring = _add(mesh.primitive_torus_add, major_radius=0.55, minor_radius=0.025, major_segments=96,
                    minor_segments=12, location=(0.0, 0.0, 0.6), rotation=(math.radians(90), 0.0, math.radians(20)))
        objs = [_smooth(ring)]
        for x, y, h in ((0.6, 0.45, 1.0), (-0.55, 0.5, 0.8), (0.1, -0.65, 1.2)):
            objs.append(_smooth(_add(mesh.primitive_cylinder_add, radius=0.02, depth=h, vertices=16,
                                     location=(x, y, h / 2))))
        return [_assign(o, mat) for o in objs]
    if name == "two":
        near = _smooth(_add(mesh.primitive_uv_sphere_add, radius=0.35, segments=64, ring_count=32,
                            location=(0.75, 0.55, 0.35)))
        far = _add(mesh.primitive_cube_add, size=0.6, location=(-0.75, -0.6, 0.3), rotation=(0, 0, math.radians(30)))
        return [_assign(near, _material("near", warm, 6.0, 4.0)), _assign(far, _material("far", cool, 6.0, 5.0))]
    if name == "rgba":
        body = _add(mesh.primitive_cube_add, size=0.9)
        bevel = body.modifiers.new("bevel", "BEVEL")
        bevel.width, bevel.segments = 0.15, 4
        ring = _smooth(_add(mesh.primitive_torus_add, major_radius=0.75, minor_radius=0.12, major_segments=64,
                            minor_segments=16, rotation=(math.radians(60), 0.0, 0.0)))
        return [_assign(body, _material("body", green, 5.0, 6.0)), _assign(ring, _material("ring", warm, 6.0, 7.0))]
    raise ValueError(f"unknown scene {name!r}")


def _rest_on_ground(obj) -> None:
    """Move `obj` down onto z = 0: its surface as rendered (modifiers applied; a subdivision surface
    lies inside its cage, so the cage's lowest vertex would leave it floating)."""
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = ev.to_mesh()
    lowest = min((ev.matrix_world @ v.co).z for v in mesh.vertices)
    ev.to_mesh_clear()
    obj.location.z -= lowest


def build_world(scene: dict) -> None:
    sc = bpy.context.scene
    world = bpy.data.worlds.new("world")
    sc.world = world
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1)   # the uniform grey sky, also the fill light
    bg.inputs["Strength"].default_value = 0.6
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 3.0
    sun.angle = math.radians(2.0)                            # sharp cast shadows
    sun_obj = bpy.data.objects.new("sun", sun)
    sun_obj.rotation_euler = (math.radians(40), 0.0, math.radians(-35))
    sc.collection.objects.link(sun_obj)
    if scene["ground"]:
        plane = _add(bpy.ops.mesh.primitive_plane_add, size=40.0)
        if scene["ground"] == "checker":
            _assign(plane, _material("ground", [(0.8, 0.78, 0.7), (0.15, 0.15, 0.18)], 4.0, checker=True))
        else:
            _assign(plane, _material("ground", [(0.45, 0.35, 0.25), (0.8, 0.72, 0.55), (0.1, 0.1, 0.1)], 3.0, 9.0))
    if scene["background"] == "dome":
        dome = _smooth(_add(bpy.ops.mesh.primitive_uv_sphere_add, radius=8.0, segments=64, ring_count=32))
        _assign(dome, _material("dome", [(0.15, 0.3, 0.6), (0.6, 0.8, 0.75), (0.9, 0.9, 0.85)], 1.2, 8.0,
                                emission=True))
        dome.visible_shadow = False                          # the sun shines through it
    sc.render.film_transparent = scene["background"] == "transparent"


def triangles(objs) -> tuple[np.ndarray, np.ndarray]:
    """World-space triangles of the evaluated objects (modifiers applied)."""
    dg = bpy.context.evaluated_depsgraph_get()
    verts, faces, offset = [], [], 0
    for obj in objs:
        ev = obj.evaluated_get(dg)
        mesh = ev.to_mesh()
        mesh.calc_loop_triangles()
        m = np.array(ev.matrix_world)
        v = np.array([tuple(x.co) for x in mesh.vertices], float)
        f = np.array([tuple(t.vertices) for t in mesh.loop_triangles], np.int64)
        verts.append(v @ m[:3, :3].T + m[:3, 3])
        faces.append(f + offset)
        offset += len(v)
        ev.to_mesh_clear()
    return np.vstack(verts), np.vstack(faces)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out = Path(job["out"])
    scene = job["scene"]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.device = "CPU"
    sc.cycles.samples = job["samples"]
    sc.cycles.use_denoising = False
    sc.cycles.max_bounces = 3                                # diffuse scenes: more bounces add time, not looks
    sc.cycles.use_adaptive_sampling = True
    sc.cycles.seed = 0
    sc.view_settings.view_transform = "Standard"             # plain sRGB: the photo is the colour
    sc.render.image_settings.file_format = "PNG"
    sc.render.image_settings.color_mode = "RGBA" if scene["background"] == "transparent" else "RGB"
    sc.render.image_settings.color_depth = "8"
    objs = build_objects(scene["name"], job.get("bunny"))
    build_world(scene)
    bpy.context.view_layer.update()

    verts, faces = triangles(objs)
    with open(out / "objects.obj", "w", encoding="utf-8") as fh:
        fh.writelines(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in verts)
        fh.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    if scene["ground"]:  # the ground is not scored: the box starts 2% of the diagonal above it
        lo[2] = max(lo[2], 0.0) + 0.02 * float(np.linalg.norm(hi - lo))
    (out / "crop.json").write_text(json.dumps({"lo": lo.tolist(), "hi": hi.tolist()}), encoding="utf-8")

    cam_data = bpy.data.cameras.new("camera")
    cam = bpy.data.objects.new("camera", cam_data)
    sc.collection.objects.link(cam)
    sc.camera = cam
    for c in job["cameras"]:
        sc.render.resolution_x = sc.render.resolution_y = c["size"]
        sc.render.resolution_percentage = 100
        cam_data.sensor_fit = "AUTO"
        cam_data.angle = c["fov"]
        cam.matrix_world = Matrix((np.asarray(c["cam_to_world"]) @ GL_FROM_CV).tolist())
        target = out / "images" / c["name"]
        if target.exists():
            continue
        tmp = target.with_name(target.stem + ".tmp.png")
        sc.render.filepath = str(tmp)
        bpy.ops.render.render(write_still=True)
        tmp.replace(target)
        print(f"rendered {c['name']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
