"""Mesh rasteriser: exact depth/normals/coverage, z-buffer, analytic antialiasing and its gradients,
frustum culling, and (with CUDA) agreement between the torch and nvdiffrast implementations."""
import math

import numpy as np
import pytest
import torch

from milo_backend.data.camera import Camera, look_at
from milo_backend.losses import mesh_depth_loss
from milo_backend.mesh import cull_to_frustum, delaunay, marching_tetrahedra, pivots, rasterize_mesh

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvdiffrast)")
# every test runs with the torch z-buffer and with the compiled one (cpu_kernels)
pytestmark = pytest.mark.usefixtures("cpu_kernels")


def front_camera(width=40, height=30, f=20.0) -> Camera:
    """At the origin looking along +z (world = camera coordinates)."""
    return Camera("front", width, height, f, f, width / 2, height / 2, np.eye(4))


def rectangle(x0, x1, y0, y1, z, dtype=torch.float64):
    """Two faces facing the camera at the origin (normals towards -z)."""
    verts = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=dtype)
    return verts, torch.tensor([[0, 2, 1], [0, 3, 2]])


def sphere_mesh(n_points=4000, seed=0, radius=1.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n_points, 3, generator=g, dtype=torch.float64) * 2.6 * radius - 1.3 * radius
    m = marching_tetrahedra(p, p.norm(dim=1) - radius, delaunay(p))
    return m.verts, m.faces


def ray_sphere_depth(cam: Camera, radius=1.0):
    """Exact (H,W) view depth of a sphere at the origin and its coverage."""
    c2w = torch.tensor(cam.cam_to_world)
    ys, xs = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    d = torch.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, torch.ones_like(xs)], -1).double()
    dw, o = d @ c2w[:3, :3].T, c2w[:3, 3]
    a, b, c = (dw * dw).sum(-1), 2 * (dw * o).sum(-1), (o * o).sum() - radius ** 2
    disc = b * b - 4 * a * c
    return (-b - disc.clamp_min(0).sqrt()) / (2 * a), disc > 0


def test_flat_rectangle_depth_normals_and_coverage_are_exact():
    cam = front_camera()
    verts, faces = rectangle(-0.7, 0.43, -0.3, 0.53, 2.0)
    out = rasterize_mesh(verts, faces, cam, backend="torch")
    assert out.depth.shape == (30, 40, 1) and out.normals.shape == (30, 40, 3) and out.mask.shape == (30, 40, 1)
    u = torch.arange(40) + 0.5
    v = torch.arange(30) + 0.5
    inside_u = (u >= 13.0) & (u <= 24.3)   # u = 20 + 20 x / 2
    inside_v = (v >= 12.0) & (v <= 20.3)
    expected = inside_v[:, None] & inside_u[None, :]
    assert torch.equal(out.mask[..., 0] > 0, expected)
    assert torch.equal(out.face_ids >= 0, expected)
    interior = expected.clone()
    interior[:, [13, 23]] = False            # columns next to the vertical silhouette edges
    interior[[12, 19]] = False               # rows next to the horizontal ones
    assert torch.allclose(out.depth[..., 0][interior], torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(out.normals[expected], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    assert (out.normals[~expected] == 0).all()


def test_nearest_face_wins_whatever_the_face_order():
    cam = front_camera()
    near_v, near_f = rectangle(-0.5, 0.5, -0.5, 0.5, 2.0)
    far_v, far_f = rectangle(-3.5, 3.5, -2.5, 2.5, 4.0)
    verts = torch.cat([far_v, near_v])
    for faces in (torch.cat([far_f, near_f + 4]), torch.cat([near_f + 4, far_f])):
        out = rasterize_mesh(verts, faces, cam, backend="torch")
        assert out.depth[15, 20, 0] == 2.0 and out.depth[15, 3, 0] == 4.0
        assert faces[out.face_ids[15, 20]].min() >= 4


def test_antialiased_depth_integrates_the_exact_silhouette_position():
    # Along a row, nvdiffrast-style antialiasing makes sum(depth) / z equal the covered length in
    # pixels, i.e. linear in where the vertical silhouette edges lie, not a step function.
    cam = front_camera()
    z = 2.0
    for x0, x1 in [(-0.7, 0.45), (-0.63, 0.52), (-0.655, 0.401)]:
        verts, faces = rectangle(x0, x1, -0.8, 0.8, z)
        out = rasterize_mesh(verts, faces, cam, backend="torch")
        rows = out.depth[10:20, :, 0]                        # rows well inside the vertical span
        width_px = 20 * (x1 - x0) / z
        assert torch.allclose(rows.sum(dim=1), torch.full((10,), z * width_px, dtype=torch.float64))


def test_silhouette_gradient_matches_finite_differences():
    cam = front_camera()
    verts, faces = rectangle(-0.63, 0.52, -0.41, 0.37, 2.0)
    verts[2, 2] = 2.6   # tilt: depth varies across the face
    verts.requires_grad_()

    def depth_image(v):
        return rasterize_mesh(v, faces, cam, backend="torch").depth

    assert torch.autograd.gradcheck(depth_image, (verts,), fast_mode=True)
    # Flat and tall: moving the left edge by dx moves it 10 dx pixels (focal 20 at z = 2), and
    # each row's depth sum by -z * 10 dx.
    v0, faces = rectangle(-0.63, 0.52, -0.8, 0.8, 2.0)
    v0.requires_grad_()
    depth_image(v0)[10:20].sum().backward()
    left_x_grad = v0.grad[[0, 3], 0].sum()
    assert torch.isclose(left_x_grad, torch.tensor(-10 * 2.0 * 20 / 2.0, dtype=torch.float64), rtol=0.05)


def test_sphere_render_matches_ray_casting():
    verts, faces = sphere_mesh(6000)
    cam = Camera("c", 48, 40, 50.0, 50.0, 24.0, 20.0, look_at([0.3, -4.0, 0.5], [0, 0, 0]))
    out = rasterize_mesh(verts, cull_to_frustum(verts, faces, cam), cam, backend="torch")
    depth, hit = ray_sphere_depth(cam)
    covered = out.mask[..., 0] > 0
    assert (covered == hit).float().mean() > 0.98
    both = covered & hit
    assert (out.depth[..., 0][both] - depth[both]).abs().median() < 0.01
    assert (out.normals[..., 2][both] < 0).all()               # outward faces look at the camera


def test_mesh_depth_loss_gradient_reaches_gaussian_means():
    # Few, large Gaussians: faces span pixels, so silhouettes are antialiased and carry gradient.
    g = torch.Generator().manual_seed(3)
    n = 10
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    scales = torch.full((n, 3), 0.12, dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    idx = torch.arange(n)
    piv0, _ = pivots(means, scales, quats, idx)
    tets = delaunay(piv0.detach())
    sdf = piv0.detach().norm(dim=1) - 0.7
    cam = Camera("c", 24, 20, 22.0, 22.0, 12.0, 10.0, look_at([0.2, -3.5, 0.4], [0, 0, 0]))
    target = torch.full((20, 24, 1), 3.0, dtype=torch.float64)

    def loss(m):
        piv, _ = pivots(m, scales, quats, idx)
        mesh = marching_tetrahedra(piv, sdf, tets)
        out = rasterize_mesh(mesh.verts, mesh.faces, cam, backend="torch")
        return mesh_depth_loss(out.depth, target, out.mask, extent=2.0)

    assert loss(means) > 0
    assert torch.autograd.gradcheck(loss, (means,), fast_mode=True)


@pytest.mark.parametrize("cpu_kernels", ["compiled"], indirect=True)
def test_compiled_zbuffer_gives_the_torch_face_ids(monkeypatch):
    # many small triangles in random depth order, some reaching past the image, degenerate ones and faces
    # with a NaN vertex (skipped by both): the same face wins at every pixel
    from milo_backend import cpu_kernels
    from milo_backend.mesh.raster_torch import visible_faces
    g = torch.Generator().manual_seed(3)
    n, height, width = 20_000, 45, 70
    centre = torch.rand(n, 1, 2, generator=g) * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor([5.0, 5.0])
    uv = (centre + torch.randn(n, 3, 2, generator=g) * 2.5).reshape(-1, 2)
    z = (torch.rand(n, 1, generator=g) * 3 + 0.5 + torch.rand(n, 3, generator=g) * 0.2).reshape(-1)
    uv[3 * 7 + 1] = uv[3 * 7]              # degenerate: two corners at one place
    uv[3 * 11, 0] = float("nan")
    faces = torch.arange(3 * n).reshape(n, 3)
    compiled = visible_faces(uv, z, faces, height, width)
    with cpu_kernels.reference_code():
        reference = visible_faces(uv, z, faces, height, width)
    assert (reference >= 0).float().mean() > 0.95 and reference.unique().numel() > 500
    assert torch.equal(compiled, reference)
    assert not (compiled == 11).any() and not (compiled == 7).any()


@pytest.mark.parametrize("cpu_kernels", ["compiled"], indirect=True)
def test_compiled_wing_vertices_give_the_torch_neighbours():
    # a closed sphere with a window cut out (boundary edges), three extra faces on one edge (non-manifold:
    # the lowest-numbered other face wins) and a duplicated face; queried faces in any order
    from milo_backend import cpu_kernels
    from milo_backend.mesh.raster_torch import _wing_vertices
    verts, faces = sphere_mesh(1500, seed=4)
    faces = faces[verts[faces].mean(dim=1)[:, 1] > -0.5]
    a, b = faces[10, 1], faces[10, 2]
    extra = torch.stack([torch.stack([v, a, b]) for v in (faces[200, 0], faces[300, 0], faces[400, 0])])
    faces = torch.cat([faces, extra, faces[20:21]])
    tris = torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(1))[:faces.shape[0] // 2]
    tris = torch.cat([tris, torch.tensor([10, faces.shape[0] - 2, faces.shape[0] - 1, 20])])
    compiled = _wing_vertices(faces, tris, verts.shape[0])
    with cpu_kernels.reference_code():
        reference = _wing_vertices(faces, tris, verts.shape[0])
    assert (reference == -1).any() and (reference >= 0).float().mean() > 0.9
    assert torch.equal(compiled, reference)
    assert compiled[-4, 0] == faces[-4, 0]          # face 10's edge (a, b): the first extra face's apex


def test_cull_to_frustum_keeps_only_faces_that_can_be_seen():
    cam = front_camera()
    verts = torch.tensor([
        [0.0, 0.0, 2.0], [0.1, 0.0, 2.0], [0.0, 0.1, 2.0],        # visible
        [-5.0, 0.0, 1.0], [-5.1, 0.0, 1.0], [-5.0, 0.1, 1.0],     # left of the image
        [0.0, 0.0, -2.0], [0.1, 0.0, -2.0], [0.0, 0.1, -2.0],     # behind the camera
        [-5.0, 0.0, 1.0], [5.0, 0.0, 1.0], [0.0, 5.0, 1.0],       # larger than the view: kept
        [0.0, 0.0, 2.0], [0.1, 0.0, 2.0], [0.0, 0.1, -1.0],       # crosses the camera plane
        [0.0, 0.0, 2.0], [0.1, 0.0, 2.0], [0.0, float("nan"), 2.0],  # a NaN vertex
    ])
    faces = torch.arange(18).reshape(6, 3)
    assert cull_to_frustum(verts, faces, cam).tolist() == [[0, 1, 2], [9, 10, 11]]


def test_empty_mesh_and_bad_backend():
    cam = front_camera()
    out = rasterize_mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), cam, backend="torch")
    assert out.mask.sum() == 0 and (out.depth == 0).all() and (out.face_ids == -1).all()
    verts, faces = rectangle(-0.5, 0.5, -0.5, 0.5, 2.0)
    with pytest.raises(ValueError, match="unknown mesh raster backend"):
        rasterize_mesh(verts, faces, cam, backend="opengl")
    with pytest.raises(ValueError, match="CUDA"):
        rasterize_mesh(verts, faces, cam, backend="nvdiffrast")


def test_nvdiffrast_module_imports_without_cuda():
    from milo_backend.mesh import raster_nvdiffrast

    assert raster_nvdiffrast.available("cpu") is False


# -- torch vs nvdiffrast (CUDA only) -------------------------------------------------------------
def _both_backends(verts, faces, cam):
    verts = verts.float().cuda()
    faces = cull_to_frustum(verts, faces.cuda(), cam)
    return (rasterize_mesh(verts, faces, cam, backend="torch"),
            rasterize_mesh(verts, faces, cam, backend="nvdiffrast"))


@CUDA
@pytest.mark.parametrize("n_points", [300, 6000], ids=["coarse", "fine"])
def test_nvdiffrast_and_torch_rasterisers_agree(n_points):
    verts, faces = sphere_mesh(n_points)
    cam = Camera("c", 160, 120, 150.0, 150.0, 80.0, 60.0, look_at([0.3, -4.0, 0.5], [0, 0, 0]))
    a, b = _both_backends(verts, faces, cam)
    assert (a.mask != b.mask).float().mean() < 0.005
    same = (a.face_ids == b.face_ids) & (a.face_ids >= 0)
    assert same.float().sum() > 0.99 * (a.face_ids >= 0).float().sum()
    assert torch.allclose(a.normals[same], b.normals[same], atol=1e-4)
    close = (a.depth - b.depth).abs()[..., 0] < 1e-3
    assert close.float().mean() > 0.995
    changed_a = ((a.depth[..., 0] - torch.where(a.mask[..., 0] > 0, a.depth[..., 0], 0)).abs() > 0).sum()
    changed_b = ((b.depth[..., 0] - torch.where(b.mask[..., 0] > 0, b.depth[..., 0], 0)).abs() > 0).sum()
    assert abs(int(changed_a) - int(changed_b)) <= max(3, 0.05 * int(changed_b))  # antialiased background


@CUDA
def test_nvdiffrast_and_torch_depth_gradients_agree():
    verts, faces = sphere_mesh(300)
    cam = Camera("c", 160, 120, 150.0, 150.0, 80.0, 60.0, look_at([0.3, -4.0, 0.5], [0, 0, 0]))
    target_depth, _ = ray_sphere_depth(cam, radius=1.1)
    target = target_depth.float().cuda()[..., None]
    grads = []
    for backend in ("torch", "nvdiffrast"):
        v = verts.float().cuda().requires_grad_()
        f = cull_to_frustum(v, faces.cuda(), cam)
        out = rasterize_mesh(v, f, cam, backend=backend)
        mesh_depth_loss(out.depth, target, out.mask, extent=4.0).backward()
        grads.append(v.grad.reshape(-1))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.98 and math.isclose(grads[0].norm().item(), grads[1].norm().item(), rel_tol=0.1)


# -- a literal, loop-based transcription of nvdiffrast's antialias kernel, as a reference ---------
def reference_antialias(color, face_ids, zbuf, uv, faces):
    """Per pixel pair, nvdiffrast's AntialiasFwdAnalysisKernel written out with Python scalars."""
    h, w = face_ids.shape
    faces_l, uv_l = faces.tolist(), uv.tolist()
    wings = {}
    for f, (a, b, c) in enumerate(faces_l):
        for va, vb, vn in ((b, c, a), (c, a, b), (a, b, c)):
            wings.setdefault((min(va, vb), max(va, vb)), []).append(vn)

    def opposite(va, vb, vr):
        cands = wings.get((min(va, vb), max(va, vb)), [])[:2]
        others = [v for v in cands if v != vr]
        return others[0] if len(cands) == 2 and len(others) == 1 else -1

    def same_sign(a, b):
        return math.copysign(1, a) == math.copysign(1, b)

    out = color.clone()
    for py in range(h):
        for px in range(w):
            for d in (0, 1):
                qx, qy = px + (1 - d), py + d
                if qx >= w or qy >= h:
                    continue
                tri0, tri1 = int(face_ids[py, px]), int(face_ids[qy, qx])
                if tri0 == tri1:
                    continue
                tri = tri0 if tri0 >= 0 else tri1
                if tri0 >= 0 and tri1 >= 0:
                    tri = tri0 if zbuf[py, px] < zbuf[qy, qx] else tri1
                fx_, fy_ = (px, py) if tri == tri0 else (qx, qy)
                vi = faces_l[tri]
                ops = [opposite(vi[2], vi[1], vi[0]), opposite(vi[0], vi[2], vi[1]), opposite(vi[1], vi[0], vi[2])]
                P = [(uv_l[v][0] - fx_ - 0.5, uv_l[v][1] - fy_ - 0.5) for v in vi]
                O = [P[k] if ops[k] < 0 else (uv_l[ops[k]][0] - fx_ - 0.5, uv_l[ops[k]][1] - fy_ - 0.5) for k in range(3)]
                (x0, y0), (x1, y1), (x2, y2) = P
                bb = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
                a = [(x1 - O[0][0]) * (y2 - O[0][1]) - (x2 - O[0][0]) * (y1 - O[0][1]),
                     (x2 - O[1][0]) * (y0 - O[1][1]) - (x0 - O[1][0]) * (y2 - O[1][1]),
                     (x0 - O[2][0]) * (y1 - O[2][1]) - (x1 - O[2][0]) * (y0 - O[2][1])]
                if not any(same_sign(ai, bb) for ai in a):
                    continue
                if d:
                    x0, y0, x1, y1, x2, y2 = y0, x0, y1, x1, y2, x2
                dxs = [x2 - x1, x0 - x2, x1 - x0]
                dys = [y2 - y1, y0 - y2, y1 - y0]
                ds = 1.0 if tri == tri0 else -1.0
                starts = [(x1, y1), (x2, y2), (x0, y0)]
                ends_y = [(y1, y2), (y2, y0), (y0, y1)]
                best, di = -math.inf, -1
                for k in range(3):
                    if same_sign(*ends_y[k]) or dys[k] == 0:
                        continue
                    xs, ys = starts[k]
                    cross = ds * (xs * dys[k] - ys * dxs[k]) / dys[k]
                    if cross > best:
                        best, di = cross, k
                if di < 0 or not same_sign(a[di], bb) or abs(dys[di]) < abs(dxs[di]):
                    continue
                if not (-0.0625 < best < 1.0625):
                    continue
                alpha = ds * (0.5 - min(max(best, 0.0), 1.0))
                target = (py, px) if alpha > 0 else (qy, qx)
                out[target] += alpha * (color[qy, qx] - color[py, px])
    return out


@pytest.mark.parametrize("n_points,open_mesh", [(150, False), (1500, False), (600, True)],
                         ids=["faces larger than pixels", "faces near pixel size", "open mesh"])
def test_torch_antialias_matches_a_literal_transcription_of_nvdiffrast(n_points, open_mesh):
    from milo_backend.mesh.view_space import project, world_to_view
    from milo_backend.mesh.raster_torch import _pixel_depth

    verts, faces = sphere_mesh(n_points, seed=5)
    if open_mesh:  # cut a window into the sphere: boundary edges, inner faces seen from behind
        faces = faces[verts[faces].mean(dim=1)[:, 1] > -0.4]
    cam = Camera("c", 40, 32, 36.0, 36.0, 20.0, 16.0, look_at([0.3, -3.2, 0.5], [0, 0, 0]))
    out = rasterize_mesh(verts, faces, cam, backend="torch")
    v_cam = world_to_view(verts, cam)
    raw = _pixel_depth(v_cam, faces, out.face_ids, cam)
    expected = reference_antialias(raw, out.face_ids, raw[..., 0], project(v_cam, cam), faces)
    assert (expected != raw).any()                       # the case exercises antialiasing
    assert torch.allclose(out.depth, expected, atol=1e-9)
