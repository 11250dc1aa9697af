"""The CPU Gaussian renderer (torch and compiled compositors) against an independent brute-force reference,
gradcheck, behaviour."""
import time

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics as gsplat_sh  # pure torch, runs on CPU

from milo_backend.bench.render import random_scene
from milo_backend.data.camera import Camera, look_at
from milo_backend.render import Splats, render
from milo_backend.render import composite as composite_module
from milo_backend.render.composite import MEDIAN_TRANSMITTANCE

# every test runs with both CPU compositors (torch and compiled), against the same references
pytestmark = pytest.mark.usefixtures("cpu_kernels")


# -- independent reference: every pixel x every Gaussian, numpy float64, one pixel at a time ------------

def reference_render(splats: Splats, camera: Camera, sh_degree: int, background=(0.0, 0.0, 0.0)) -> dict:
    means, quats, scales, opac, sh = (t.detach().double().cpu().numpy() for t in splats)
    n = len(means)
    R, t = camera.world_to_cam[:3, :3], camera.world_to_cam[:3, 3]
    pc = means @ R.T + t
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q.T
    rot = np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                    np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                    np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)
    fx, fy, cx, cy, W, H = camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height
    centre = camera.center
    colors = gsplat_sh(sh_degree, torch.from_numpy(means - centre), torch.from_numpy(sh)).numpy()
    colors = np.maximum(colors + 0.5, 0.0)
    uv, conic, normal = np.zeros((n, 2)), np.zeros((n, 2, 2)), np.zeros((n, 3))
    for i in range(n):
        cov_c = R @ rot[i] @ np.diag(scales[i] ** 2) @ rot[i].T @ R.T
        xi, yi, zi = pc[i]
        # view angles clamped to the frustum + 30% of its half-size, as 3DGS
        mx, my = 0.3 * 0.5 * W / fx, 0.3 * 0.5 * H / fy
        tx = zi * min((W - cx) / fx + mx, max(-(cx / fx + mx), xi / zi))
        ty = zi * min((H - cy) / fy + my, max(-(cy / fy + my), yi / zi))
        J = np.array([[fx / zi, 0, -fx * tx / zi ** 2], [0, fy / zi, -fy * ty / zi ** 2]])
        conic[i] = np.linalg.inv(J @ cov_c @ J.T + 0.3 * np.eye(2))
        uv[i] = [fx * xi / zi + cx, fy * yi / zi + cy]
        nrm = R @ rot[i][:, np.argmin(scales[i])]
        normal[i] = -nrm if nrm @ pc[i] > 0 else nrm
    order = np.argsort(pc[:, 2], kind="stable")
    out = {k: np.zeros((H, W, c)) for k, c in [("color", 3), ("alpha", 1), ("depth_expected", 1),
                                                 ("depth_median", 1), ("normals", 3)]}
    max_id = -np.ones((H, W), dtype=np.int64)
    stopped = np.zeros((H, W), dtype=bool)
    weight_sum, touched = np.zeros(n), np.zeros(n, dtype=np.int64)
    for py in range(H):
        for px in range(W):
            T, acc, depth, nacc, best = 1.0, np.zeros(3), 0.0, np.zeros(3), 0.0
            for i in order:
                if pc[i, 2] < 0.01:
                    continue
                d = uv[i] - (px + 0.5, py + 0.5)
                sigma = 0.5 * d @ conic[i] @ d
                alpha = min(0.999, opac[i] * np.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    stopped[py, px] = True
                    break
                wgt = alpha * T
                acc += wgt * colors[i]
                depth += wgt * pc[i, 2]
                nacc += wgt * normal[i]
                if T >= MEDIAN_TRANSMITTANCE > T * (1 - alpha):
                    out["depth_median"][py, px] = pc[i, 2]
                if wgt > best:
                    best, max_id[py, px] = wgt, i
                weight_sum[i] += wgt
                touched[i] += 1
                T *= 1 - alpha
            a = 1 - T
            out["color"][py, px] = acc + T * np.asarray(background)
            out["alpha"][py, px] = a
            out["depth_expected"][py, px] = depth / max(a, 1e-10)
            out["normals"][py, px] = nacc / max(np.linalg.norm(nacc), 1e-12)
    out.update(max_weight_id=max_id, weight_sum=weight_sum, pixels_touched=touched,
               pixels_dominated=np.bincount(max_id[max_id >= 0], minlength=n), uv=uv,
               stopped=stopped)
    return out


def small_scene(n=30, width=40, height=24, seed=1, dtype=torch.float64, radius_px=(2.0, 12.0)):
    return random_scene(n, width, height, radius_px=radius_px, seed=seed, dtype=dtype,
                        opacity=(0.2, 1.0))


def leaves(splats: Splats) -> Splats:
    return Splats(*(t.detach().clone().requires_grad_(True) for t in splats))


# -- correctness --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sh_degree", [0, 3])
def test_matches_brute_force_reference(sh_degree):
    # 40x24: several tiles, a partial tile column and row; radii up to 12 px cross tile borders
    splats, camera = small_scene()
    if sh_degree == 3:  # and a camera with fx != fy and an off-centre principal point
        camera = Camera("c", 40, 24, fx=37.0, fy=45.0, cx=15.3, cy=14.1,
                        world_to_cam=look_at([0.5, -4.0, 0.3], [0.2, 0.0, 0.1]))
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    out = render(splats, camera, sh_degree=sh_degree, background=bg, backend="torch", with_stats=True)
    ref = reference_render(splats, camera, sh_degree, background=bg.numpy())
    assert out.alpha.max() > 0.9 and (out.alpha < 0.01).any(), "scene should have opaque and empty pixels"
    for key in ("color", "alpha", "depth_expected", "depth_median", "normals"):
        np.testing.assert_allclose(getattr(out, key).numpy(), ref[key], atol=1e-9, err_msg=key)
    np.testing.assert_allclose(out.weight_sum.numpy(), ref["weight_sum"], atol=1e-9)
    np.testing.assert_array_equal(out.pixels_touched.numpy(), ref["pixels_touched"])
    np.testing.assert_array_equal(out.max_weight_id.numpy(), ref["max_weight_id"])
    np.testing.assert_array_equal(out.pixels_dominated.numpy(), ref["pixels_dominated"])
    np.testing.assert_allclose(out.means2d.numpy(), ref["uv"], atol=1e-9)


def test_float32_matches_reference_and_gaussians_stop_early():
    # opaque stack: many pixels reach T <= 1e-4, so the early stop must match the reference
    splats, camera = small_scene(n=60, seed=3, dtype=torch.float32, radius_px=(6.0, 20.0))
    splats = splats._replace(opacities=torch.full_like(splats.opacities, 0.97))
    out = render(splats, camera, sh_degree=3, backend="torch", with_stats=True)
    ref = reference_render(splats, camera, 3)
    assert ref["stopped"].mean() > 0.2
    for key in ("color", "alpha", "depth_expected", "depth_median"):
        np.testing.assert_allclose(getattr(out, key).numpy(), ref[key], atol=2e-4, rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(out.weight_sum.numpy(), ref["weight_sum"], rtol=1e-3, atol=1e-3)


def test_float32_needle_thin_gaussians_lose_no_pixels():
    # the per-row column spans are solved in closed form: thin, tilted ellipses stress its rounding
    splats, camera = small_scene(n=60, seed=2, dtype=torch.float32, radius_px=(2.0, 30.0))
    g = torch.Generator().manual_seed(2)
    splats = splats._replace(scales=splats.scales * torch.exp(torch.empty(60, 3).uniform_(-3.5, 1.0, generator=g)))
    out = render(splats, camera, sh_degree=3, backend="torch", with_stats=True)
    ref = reference_render(splats, camera, 3)
    np.testing.assert_array_equal(out.pixels_touched.numpy(), ref["pixels_touched"])
    np.testing.assert_allclose(out.color.numpy(), ref["color"], atol=2e-5)


@pytest.mark.parametrize("cpu_kernels", ["torch"], indirect=True)  # the torch compositor's chunks
def test_chunking_and_recomputed_backward_give_identical_results(monkeypatch):
    splats, camera = small_scene(n=40, seed=5)
    def run():
        sp = leaves(splats)
        out = render(sp, camera, sh_degree=3, backend="torch", with_stats=True)
        (out.color.sum() + out.depth_expected.sum() + out.normals.sum() + out.alpha.sum()).backward()
        return out, [t.grad for t in sp]
    base, base_grads = run()
    # tiny budgets: one tile per chunk, nothing stored (the backward recomputes every chunk)
    monkeypatch.setattr(composite_module, "PAIR_BUDGET", 1)
    monkeypatch.setattr(composite_module, "STORE_BUDGET", 0)
    calls = []
    real = composite_module._chunk_pairs
    def counting(plan, chunk, table, geometry):
        calls.append(geometry)
        return real(plan, chunk, table, geometry)
    monkeypatch.setattr(composite_module, "_chunk_pairs", counting)
    small, small_grads = run()
    n_tiles = 3 * 2  # 40x24 pixels
    assert calls.count(False) == n_tiles and calls.count(True) == n_tiles  # forward, then recomputed
    for key in ("color", "alpha", "depth_expected", "depth_median", "normals", "weight_sum", "max_weight_id"):
        torch.testing.assert_close(getattr(small, key), getattr(base, key), rtol=1e-12, atol=1e-12)
    for a, b in zip(small_grads, base_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    splats, camera = random_scene(4, 8, 8, radius_px=(3.0, 6.0), sh_degree=1, seed=7, dtype=torch.float64,
                                  opacity=(0.3, 0.9))
    # distinct, well separated scales so the "shortest axis" normal is a smooth function
    splats = splats._replace(scales=splats.scales * torch.tensor([1.0, 1.5, 2.2], dtype=torch.float64))
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)

    # random linear functionals of every output: one backward each instead of one per pixel and channel
    g = torch.Generator().manual_seed(0)
    probes = [torch.randn(2, 8, 8, c, generator=g, dtype=torch.float64) for c in (3, 1, 1, 3)]

    def f(means, quats, scales, opacities, sh):
        out = render(Splats(means, quats, scales, opacities, sh), camera, sh_degree=1, background=bg,
                     backend="torch")
        images = (out.color, out.alpha, out.depth_expected, out.normals)
        return tuple((p * img).flatten(1).sum(1) for p, img in zip(probes, images))
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in splats)
    assert render(splats, camera, sh_degree=1, backend="torch").alpha.max() > 0.5
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_median_depth_gradient_reaches_only_the_median_gaussians():
    splats, camera = small_scene(n=20, seed=9)
    sp = leaves(splats)
    out = render(sp, camera, sh_degree=0, backend="torch")
    out.depth_median.sum().backward()
    view = torch.as_tensor(camera.world_to_cam)
    z = splats.means @ view[2, :3] + view[2, 3]
    medians = out.depth_median.detach().flatten()
    medians = medians[medians > 0]
    assert len(medians) > 50
    owner = torch.argmin((medians[:, None] - z[None, :]).abs(), dim=1)
    pixels_per_gaussian = torch.bincount(owner, minlength=20).double()
    # d(median depth)/d(mean) is the camera's z axis, once per pixel whose median is that Gaussian
    torch.testing.assert_close(sp.means.grad, pixels_per_gaussian[:, None] * view[2, :3][None, :])
    assert sp.opacities.grad is None or not sp.opacities.grad.any()


# -- behaviour users rely on ---------------------------------------------------------------------------

def one_gaussian(z=3.0, opacity=1.0, color=(0.9, 0.2, 0.1), scale=0.2, size=32, xy=(0.0, 0.0)):
    camera = Camera("c", size, size, fx=size, fy=size, cx=size / 2, cy=size / 2)  # identity pose: looks down +z
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 0] = (torch.tensor(color, dtype=torch.float64) - 0.5) / 0.28209479177387814
    splats = Splats(torch.tensor([[xy[0], xy[1], z]], dtype=torch.float64),
                    torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                    torch.tensor([[scale, scale, scale * 0.1]], dtype=torch.float64),
                    torch.tensor([opacity], dtype=torch.float64), sh)
    return splats, camera


def central_alpha(opacity, scale, z, size=32):
    """Alpha of `one_gaussian` at pixel (16, 16), whose centre is half a pixel off in x and y."""
    var = (size * scale / z) ** 2 + 0.3  # projected variance + the 0.3 px low-pass
    return min(0.999, opacity * np.exp(-0.5 * 0.5 / var))


def concat(*scenes: Splats) -> Splats:
    return Splats(*(torch.cat(parts) for parts in zip(*scenes)))


def test_single_opaque_gaussian_median_depth_colour_and_normal():
    splats, camera = one_gaussian(z=3.0)
    out = render(splats, camera, sh_degree=0, backend="torch", with_stats=True)
    centre = out.depth_median[16, 16, 0]
    assert centre == 3.0
    assert out.depth_expected[16, 16, 0] == pytest.approx(3.0)
    a = central_alpha(1.0, 0.2, 3.0)
    assert out.alpha[16, 16, 0] == pytest.approx(a, rel=1e-12)
    torch.testing.assert_close(out.color[16, 16], torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64) * a)
    # the flat axis is z: the normal faces the camera, i.e. -z in view space
    torch.testing.assert_close(out.normals[16, 16], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    assert out.depth_median[0, 0, 0] == 0 and out.alpha[0, 0, 0] == 0  # outside the Gaussian
    assert out.radii[0] > 0 and out.max_weight_id[16, 16] == 0


def test_gaussian_behind_camera_is_invisible_and_background_shows():
    splats, camera = one_gaussian(z=-3.0)
    bg = torch.tensor([0.1, 0.7, 0.3], dtype=torch.float64)
    sp = leaves(splats)
    out = render(sp, camera, sh_degree=0, background=bg, backend="torch", with_stats=True)
    assert out.radii[0] == 0 and out.alpha.abs().max() == 0
    torch.testing.assert_close(out.color, bg.expand(32, 32, 3))
    assert (out.max_weight_id == -1).all() and out.pixels_touched[0] == 0
    assert (out.depth_median == 0).all() and (out.depth_expected == 0).all() and (out.normals == 0).all()
    out.color.sum().backward()
    assert torch.isfinite(sp.means.grad).all() and sp.means.grad.abs().max() == 0


def test_background_blends_with_partial_alpha():
    splats, camera = one_gaussian(opacity=0.5, color=(1.0, 1.0, 1.0))
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    out = render(splats, camera, sh_degree=0, background=bg, backend="torch")
    a = out.alpha[16, 16, 0]
    assert 0.4 < a < 0.51
    torch.testing.assert_close(out.color[16, 16], torch.stack([a, a, a + (1 - a)]))


def test_front_gaussian_wins_max_weight_and_occludes():
    front, camera = one_gaussian(z=2.0, color=(1.0, 0.0, 0.0), opacity=0.9)
    back, _ = one_gaussian(z=4.0, color=(0.0, 0.0, 1.0), opacity=0.9, scale=0.4)
    out = render(concat(back, front), camera, sh_degree=0, backend="torch", with_stats=True)
    assert out.max_weight_id[16, 16] == 1
    a_front, a_back = central_alpha(0.9, 0.2, 2.0), central_alpha(0.9, 0.4, 4.0)
    torch.testing.assert_close(out.color[16, 16], torch.tensor([a_front, 0, (1 - a_front) * a_back],
                                                               dtype=torch.float64))
    assert out.depth_median[16, 16, 0] == 2.0
    assert 2.0 < out.depth_expected[16, 16, 0] < 2.3
    assert out.pixels_dominated[1] > 0 and out.pixels_dominated.sum() == (out.max_weight_id >= 0).sum()
    assert out.weight_sum[1] > out.weight_sum[0] * 0.5


def test_sh_degree1_colour_follows_view_direction():
    # one Gaussian seen from two sides: the degree-1 term flips sign with the direction, as eval_sh says
    from milo_backend.render.sh import SH_C1
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 3, 0] = 0.5      # red varies with the x component of the view direction (basis -C1 * x)
    splats = Splats(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                    torch.full((1, 3), 0.3, dtype=torch.float64), torch.tensor([0.99], dtype=torch.float64), sh)
    colors = []
    for eye in ([-3.0, 0.0, 0.0], [3.0, 0.0, 0.0]):
        cam = Camera("c", 16, 16, fx=16, fy=16, cx=8, cy=8, world_to_cam=look_at(eye, [0, 0, 0]))
        out = render(splats, cam, sh_degree=1, backend="torch")
        colors.append(out.color[8, 8] / out.alpha[8, 8])
        # direction camera -> Gaussian is -eye/|eye|
        expected_red = 0.5 - SH_C1 * (-eye[0] / 3.0) * 0.5
        assert colors[-1][0].item() == pytest.approx(expected_red, abs=1e-9)
        assert out.color.shape == (16, 16, 3)
    assert colors[0][0] != pytest.approx(colors[1][0].item())
    # degree 0 ignores the higher coefficients
    out0 = render(splats, cam, sh_degree=0, backend="torch")
    assert (out0.color[8, 8] / out0.alpha[8, 8])[0].item() == pytest.approx(0.5)


def test_means2d_gradient_is_retained_for_densification():
    splats, camera = small_scene(n=30, seed=11, dtype=torch.float32)
    splats = concat(splats, Splats(*(t[:1].clone() for t in splats))._replace(
        means=torch.tensor([[0.0, -10.0, 0.0]])))  # last one behind the camera
    sp = leaves(splats)
    out = render(sp, camera, sh_degree=3, backend="torch")
    out.color.mean().backward()
    g = out.means2d.grad
    assert g is not None and g.shape == (31, 2)
    visible = out.radii > 0
    assert not visible[-1] and g[-1].abs().max() == 0
    assert (g[visible].abs().sum(1) > 0).float().mean() > 0.9


def test_empty_scene_renders_background():
    splats = Splats(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 1, 3))
    camera = Camera("c", 20, 10, fx=20, fy=20, cx=10, cy=5)
    out = render(splats, camera, sh_degree=0, background=torch.ones(3), backend="torch", with_stats=True)
    assert out.color.shape == (10, 20, 3) and (out.color == 1).all() and (out.alpha == 0).all()
    assert out.weight_sum.shape == (0,) and (out.max_weight_id == -1).all()


def test_64px_2k_gaussians_is_quick():
    torch.set_num_threads(2)
    splats, camera = random_scene(2000, 64, 64)
    sp = leaves(splats)
    start = time.perf_counter()
    out = render(sp, camera, sh_degree=3, backend="torch", with_stats=True)
    (out.color.sum() + out.depth_median.sum() + out.normals.sum()).backward()
    elapsed = time.perf_counter() - start
    assert out.alpha.mean() > 0.3 and torch.isfinite(sp.means.grad).all()
    assert elapsed < 10.0, f"64x64 / 2k Gaussians took {elapsed:.1f} s"


@pytest.mark.parametrize("cpu_kernels", ["compiled"], indirect=True)
def test_compiled_compositor_matches_torch_on_a_crowded_scene(monkeypatch):
    # 4k Gaussians on 96x80 px: long per-tile lists, pixels that turn opaque early, partial tiles
    from milo_backend import cpu_kernels
    splats, camera = random_scene(4000, 96, 80, radius_px=(1.5, 14.0), seed=4, opacity=(0.05, 0.99))

    def run(compiled, threads=2):
        monkeypatch.setattr(cpu_kernels, "_FORCE_TORCH", not compiled)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        sp = leaves(splats)
        out = render(sp, camera, sh_degree=3, backend="torch", with_stats=True)
        (out.color.sum() + out.alpha.sum() + 0.1 * out.depth_expected.sum() + out.normals.sum()
         + 0.1 * out.depth_median.sum()).backward()
        torch.set_num_threads(before)
        return out, [t.grad for t in sp] + [out.means2d.grad]
    ref, ref_grads = run(False)
    out, grads = run(True)
    assert (ref.alpha > 0.999).float().mean() > 0.2, "the scene should have opaque pixels"
    for key in ("color", "alpha", "depth_expected", "normals"):
        torch.testing.assert_close(getattr(out, key), getattr(ref, key), atol=2e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(out.weight_sum, ref.weight_sum, atol=1e-4, rtol=1e-4)
    # ids and counts may differ only where float32 rounding decides a threshold
    for key in ("depth_median", "max_weight_id", "pixels_touched"):
        assert (getattr(out, key) != getattr(ref, key)).float().mean() < 1e-3, key
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-3)
    # per-Gaussian sums are made per tile entry and added in one order: threads do not change a bit
    one, one_grads = run(True, threads=1)
    assert torch.equal(one.color, out.color) and torch.equal(one.weight_sum, out.weight_sum)
    assert all(torch.equal(a, b) for a, b in zip(one_grads, grads))
