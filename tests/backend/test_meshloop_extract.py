"""The final mesh: SDF-only refinement, orientation, vertex colours, statistics, files, `extract`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from milo_backend.errors import MiloError
from milo_backend.events import NullReporter
from milo_backend.extract import (drop_fragments, extract_mesh, fill_from_neighbours, keep_vertices, mesh_stats,
                                  seen_by_any_camera, write_mesh_outputs)
from milo_backend.mesh import cull_to_frustum, rasterize_mesh
from milo_backend.mesh_io import read_mesh
from test_meshloop_phase import RADIUS, make_phase, sphere_cameras, sphere_model

RED, BLUE = (0.9, 0.15, 0.1), (0.1, 0.2, 0.9)


pytestmark = pytest.mark.usefixtures("one_thread")


def sphere_photo(cam) -> torch.Tensor:
    """Ray-traced photo of the sphere: red where z > 0, blue below, black background."""
    c2w = cam.cam_to_world
    ys, xs = np.meshgrid(np.arange(cam.height) + 0.5, np.arange(cam.width) + 0.5, indexing="ij")
    d = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1) @ c2w[:3, :3].T
    o = c2w[:3, 3]
    a, b, c = (d * d).sum(-1), 2 * (d @ o), o @ o - RADIUS ** 2
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    z = o[2] + t * d[..., 2]
    img = np.where((z > 0)[..., None], RED, BLUE) * (disc > 0)[..., None]
    return torch.tensor(img, dtype=torch.float32)


@pytest.fixture(scope="module")
def extracted():
    torch.set_num_threads(1)
    model, cams = sphere_model(), sphere_cameras()
    phase = make_phase(model, cams, max_pivots=9 * 400)
    phase.start(1601)
    params_before = {k: v.detach().clone() for k, v in model.params.items()}
    shift_before = phase.shift.detach().clone()
    reporter = NullReporter()
    mesh = extract_mesh(phase, sphere_photo, iterations=6, labels_every=3, reporter=reporter)
    return mesh, phase, model, params_before, shift_before, reporter


def test_refinement_moves_only_the_sdf(extracted):
    mesh, phase, model, params_before, shift_before, reporter = extracted
    for k, v in model.params.items():
        assert torch.equal(v.detach(), params_before[k]), k     # Gaussians frozen
    assert not torch.equal(phase.shift.detach(), shift_before)  # the SDF learned
    steps = [e for e in reporter.of("progress") if e["stage"] == "extract"]
    assert [e["step"] for e in steps] == list(range(1, 7))
    assert not reporter.of("warning")


def test_faces_point_outwards_and_lie_on_the_sphere(extracted):
    mesh, phase = extracted[0], extracted[1]
    v, f = mesh.verts.astype(np.float64), mesh.faces
    assert len(f) > 500
    # counter-clockwise seen from outside: positive signed volume (divergence theorem), ~ the sphere's
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    volume = (a * np.cross(b, c)).sum() / 6
    assert volume == pytest.approx(4 / 3 * np.pi * RADIUS ** 3, rel=0.2)
    # and every view sees the front of the faces it sees (a few folds of the bumpy surface aside)
    verts, faces = torch.from_numpy(mesh.verts), torch.from_numpy(f)
    for cam in phase.cameras:
        r = rasterize_mesh(verts, cull_to_frustum(verts, faces, cam), cam, backend="torch")
        assert (r.normals[..., 2][r.face_ids >= 0] < 0).float().mean() > 0.97
    assert np.abs(np.linalg.norm(v, axis=1) - RADIUS).mean() < 0.035


def test_vertex_colours_come_from_the_photos(extracted):
    mesh = extracted[0]
    top, bottom = mesh.verts[:, 2] > 0.25, mesh.verts[:, 2] < -0.25
    assert mesh.colors.dtype == np.uint8 and mesh.colors.shape == mesh.verts.shape
    r, g, b = mesh.colors.astype(float).T
    # the hue of the photo above and below the equator (silhouette pixels darken some vertices:
    # the bumpy 32-pixel mesh reaches past the sphere's outline, onto the black background)
    assert ((r > 3 * b) & (r > 3 * g))[top].mean() > 0.95
    assert ((b > 3 * r) & (b > 2 * g))[bottom].mean() > 0.95
    assert np.median(mesh.colors[top], axis=0) == pytest.approx(np.array(RED) * 255, abs=3)


def test_hidden_vertices_take_their_neighbours_colour():
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [2, 3, 4], [5, 6, 7]])
    colors = torch.zeros(8, 3)
    colors[0] = torch.tensor([1.0, 0.0, 0.0])
    known = torch.zeros(8, dtype=torch.bool)
    known[0] = True
    out = fill_from_neighbours(colors, known, faces)
    assert torch.allclose(out[:5], torch.tensor([1.0, 0.0, 0.0]).expand(5, 3))
    assert torch.allclose(out[5:], torch.full((3, 3), 0.5))   # not connected to any colour: grey


def test_mesh_stats_of_known_meshes():
    tetra = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    assert mesh_stats(4, tetra) == {"vertices": 4, "faces": 4, "boundary_edges": 0, "non_manifold_edges": 0,
                                    "connected_components": 1}
    two = np.array([[0, 1, 2], [3, 4, 5]])
    assert mesh_stats(6, two) == {"vertices": 6, "faces": 2, "boundary_edges": 6, "non_manifold_edges": 0,
                                  "connected_components": 2}
    fin = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])  # three faces on edge (0,1)
    s = mesh_stats(5, fin)
    assert s["non_manifold_edges"] == 1 and s["boundary_edges"] == 6 and s["connected_components"] == 1
    assert mesh_stats(0, np.zeros((0, 3), int))["faces"] == 0


def test_small_disconnected_pieces_are_dropped():
    """A closed surface of 200 faces and two floaters (1 and 4 faces): the floaters go, the surface
    stays whole and its vertices are renumbered."""
    n = 100
    ring = torch.stack([torch.cos(torch.arange(n) * 2 * torch.pi / n), torch.sin(torch.arange(n) * 2 * torch.pi / n),
                        torch.zeros(n)], 1).double()
    verts = torch.cat([ring, torch.tensor([[0, 0, 1.0], [0, 0, -1.0]]).double(),
                       torch.rand(3 + 6, 3).double() + 5])
    i = torch.arange(n)
    cap = torch.cat([torch.stack([i, (i + 1) % n, torch.full_like(i, n)], 1),
                     torch.stack([(i + 1) % n, i, torch.full_like(i, n + 1)], 1)])
    floaters = torch.tensor([[102, 103, 104], [105, 106, 107], [105, 107, 108], [106, 108, 107], [105, 108, 106]])
    faces = torch.cat([cap, floaters])
    v, f, dropped, kept = drop_fragments(verts, faces, 0.01 * 40)  # pieces under 40% of 205 faces
    assert (dropped, kept) == (2, 0) and f.shape == (200, 3) and v.shape == (102, 3)
    assert torch.equal(v[f], verts[cap])
    assert mesh_stats(len(v), f.numpy())["connected_components"] == 1
    assert drop_fragments(verts, faces, 0.0)[1].shape == faces.shape  # 0 keeps everything


def cube(centre, size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed axis-aligned cube (8 vertices, 12 outward faces)."""
    c = torch.tensor([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=torch.float64) - 0.5
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    faces = torch.tensor([t for a, b, c_, d in quads for t in ((a, b, c_), (a, c_, d))])
    return c * size + torch.tensor(centre, dtype=torch.float64), faces


def test_a_small_piece_on_the_gaussians_surface_is_kept_a_floater_is_not():
    """A large body with two small cubes beside it. The Gaussians' depth maps show the body and one
    cube (a real small object: a rod, a ring): that cube is the visible surface on that depth in most
    views and is kept; the other cube, absent from the depth maps (a floater), is dropped."""
    body_v, body_f = cube((0.0, 0.0, 0.0), 1.2)
    # subdivide the body so the small pieces are under 10% of the faces: 12 faces -> 12 * 4^3
    for _ in range(3):
        a, b, c = body_f[:, 0], body_f[:, 1], body_f[:, 2]
        mids = torch.cat([(body_v[a] + body_v[b]) / 2, (body_v[b] + body_v[c]) / 2, (body_v[c] + body_v[a]) / 2])
        n, m = body_v.shape[0], body_f.shape[0]
        ab, bc, ca = n + torch.arange(m), n + m + torch.arange(m), n + 2 * m + torch.arange(m)
        body_v = torch.cat([body_v, mids])
        body_f = torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    real_v, real_f = cube((1.25, 0.2, 0.1), 0.35)
    fake_v, fake_f = cube((-1.25, -0.2, 0.1), 0.35)
    def merge(*parts):
        verts, faces, n = [], [], 0
        for v, f in parts:
            verts.append(v)
            faces.append(f + n)
            n += v.shape[0]
        return torch.cat(verts).float(), torch.cat(faces)
    truth_v, truth_f = merge((body_v, body_f), (real_v, real_f))
    verts, faces = merge((body_v, body_f), (real_v, real_f), (fake_v, fake_f))
    cams = sphere_cameras(size=48)

    def gaussian_depth(cam):
        out = rasterize_mesh(truth_v, cull_to_frustum(truth_v, truth_f, cam), cam, backend="torch")
        return out.depth * (out.mask > 0.5)

    v, f, dropped, kept = drop_fragments(verts, faces, 0.1, cams, gaussian_depth, tol=0.02, backend="torch")
    assert (dropped, kept) == (1, 1) and f.shape[0] == body_f.shape[0] + 12
    assert torch.allclose(v[f[-12:]].reshape(-1, 3).mean(0), torch.tensor([1.25, 0.2, 0.1]), atol=1e-5)
    # without depth maps both small cubes go, as before
    assert drop_fragments(verts, faces, 0.1)[2:] == (2, 0)


def test_unseen_vertices_are_removed(extracted):
    mesh = extracted[0]
    verts, faces = torch.from_numpy(mesh.verts), torch.from_numpy(mesh.faces)
    narrow = sphere_cameras(16, eyes=[(0, 0, 3)])
    narrow[0].fx = narrow[0].fy = 40.0  # sees only the top cap
    keep = seen_by_any_camera(verts, narrow)
    assert 0 < keep.sum() < len(keep)
    v2, f2 = keep_vertices(verts, faces, keep)
    assert seen_by_any_camera(v2, narrow).all() and len(f2) > 0 and f2.max() < len(v2)
    assert len(v2) == len(torch.unique(f2))   # no vertex left without a face


def test_outputs_on_disk(extracted, tmp_path):
    mesh, phase = extracted[0], extracted[1]
    out = tmp_path / "sortie ü"
    reporter = NullReporter()
    paths = write_mesh_outputs(out, mesh, phase.cameras, sphere_photo, reporter)
    v, f = read_mesh(paths["mesh"])
    assert np.allclose(v, mesh.verts) and (f == mesh.faces).all()
    stats = json.loads((out / "mesh_stats.json").read_text())
    assert stats == mesh_stats(len(mesh.verts), mesh.faces) and stats["vertices"] == len(v)
    previews = sorted((out / "previews").glob("mesh_*.png"))
    assert len(previews) == 3 and Image.open(previews[0]).size == (3 * 32, 32)
    assert {e["kind"] for e in reporter.of("artifact")} == {"mesh", "mesh_stats", "mesh_preview"}


def test_an_empty_mesh_is_written_with_a_warning(tmp_path):
    model, cams = sphere_model(80), sphere_cameras(16)
    phase = make_phase(model, cams)
    phase.start(1)
    with torch.no_grad():
        phase.base.fill_(-4.0)  # every pivot outside
    reporter = NullReporter()
    mesh = extract_mesh(phase, sphere_photo, iterations=1, labels_every=1, reporter=reporter)
    assert len(mesh.faces) == 0 and any("empty" in w["message"] for w in reporter.of("warning"))
    write_mesh_outputs(tmp_path, mesh, cams, sphere_photo)
    assert read_mesh(tmp_path / "mesh.ply")[0].shape == (0, 3)
    assert json.loads((tmp_path / "mesh_stats.json").read_text())["faces"] == 0


def test_a_disabled_phase_cannot_extract():
    model, cams = sphere_model(30), sphere_cameras(16, eyes=[(3, 0, 0)])
    phase = make_phase(model, cams)
    with pytest.raises(MiloError, match="no mesh can be extracted"):
        extract_mesh(phase, sphere_photo, iterations=1, labels_every=1)


def test_extract_command_on_a_run_trained_without_mesh(tmp_path, cli):
    """A folder with Gaussians but no mesh state (another trainer, or --no-mesh): extraction works,
    post hoc, with a warning."""
    from milo_backend.atomic import write_json
    from milo_backend.gaussians.ply import write_ply

    run = tmp_path / "run sans maillage"
    cams = sphere_cameras(24)
    for cam in cams:
        cam.image_path = run / "images" / cam.name
        cam.image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((sphere_photo(cam).numpy() * 255).astype(np.uint8)).save(cam.image_path)
    write_ply(sphere_model(300), run / "gaussians.ply")
    write_json(run / "cameras.json", {"cameras": [c.to_json() for c in cams]})
    write_json(run / "config.json", {"iterations": 1800, "preset": "verylowres", "scene": "outdoor"})
    code, events, err = cli.run("extract", run, "--iterations", 4, "--device", "cpu")
    assert code == 0, err + json.dumps(events[-3:])
    warnings = [e for e in events if e["event"] == "warning"]
    assert any("without the mesh" in w["message"] for w in warnings)
    outputs = events[-1]["outputs"]
    v, f = read_mesh(outputs["mesh"])
    assert len(f) > 100 and np.abs(np.linalg.norm(v, axis=1) - RADIUS).mean() < 0.05
    assert json.loads((run / "mesh_stats.json").read_text())["faces"] == len(f)

    from milo_backend.extract import extract_run
    with pytest.raises(MiloError, match="no training run") as e:
        extract_run(tmp_path / "nowhere", NullReporter(), device="cpu")
    assert "train" in e.value.hint


def test_mesh_preview_shows_each_face_in_its_own_colour(tmp_path):
    """The colour panel of `mesh_*.png`: faces the frustum culls must not shift the colours of the
    visible ones (a red square behind the camera, listed first, and a green one in view)."""
    from milo_backend.data.camera import Camera, look_at
    from milo_backend.extract import ColouredMesh, mesh_previews

    square = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    verts = np.concatenate([square + [0, 0, 10], square])                 # red one behind the camera
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    colors = np.array([[255, 0, 0]] * 4 + [[0, 255, 0]] * 4, np.uint8)
    cam = Camera("v.png", 32, 32, fx=20, fy=20, cx=16, cy=16, world_to_cam=look_at((0, 0, 3), (0, 0, 0)))
    [path] = mesh_previews(tmp_path, ColouredMesh(verts, faces, colors), [cam],
                           lambda c: torch.zeros(32, 32, 3), n=1)
    panel = np.asarray(Image.open(path))[:, 64:]
    covered = panel.sum(axis=2) > 0
    assert covered.mean() > 0.1
    assert (panel[covered] == [0, 255, 0]).all()
