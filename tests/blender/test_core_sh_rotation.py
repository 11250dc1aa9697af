"""View-dependent colour turns with the splat: rotating 3DGS real SH coefficients (numpy only)."""
import numpy as np
import pytest

from milo_blender.core.quat import quat_to_matrix
from milo_blender.core.sh_rotation import rotate_sh, rotate_sh_components, sh_rotation_matrices

# 3DGS's sh_utils constants, written out again so that this reference does not share code with the module.
C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435]


def eval_sh(degree, sh, dirs):
    """3DGS's eval_sh: sh (N, (degree+1)^2, C) with the DC first, unit dirs (N, 3) -> (N, C)."""
    x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
    result = C0 * sh[:, 0]
    if degree > 0:
        result = result - C1 * y * sh[:, 1] + C1 * z * sh[:, 2] - C1 * x * sh[:, 3]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            result = (result + C2[0] * xy * sh[:, 4] + C2[1] * yz * sh[:, 5] + C2[2] * (2 * zz - xx - yy) * sh[:, 6]
                      + C2[3] * xz * sh[:, 7] + C2[4] * (xx - yy) * sh[:, 8])
            if degree > 2:
                result = (result + C3[0] * y * (3 * xx - yy) * sh[:, 9] + C3[1] * xy * z * sh[:, 10]
                          + C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                          + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                          + C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + C3[5] * z * (xx - yy) * sh[:, 14]
                          + C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return result


def random_rotations(rng, n):
    q = rng.normal(size=(n, 4))
    return quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True))


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_rotated_sh_at_rotated_direction_equals_original(degree, dtype, tol):
    rng = np.random.default_rng(degree)
    n = 500
    sh = rng.normal(size=(n, (degree + 1) ** 2, 3))
    rotations = random_rotations(rng, n)
    dirs = unit(rng.normal(size=(n, 3)))
    rotated = rotate_sh(sh[:, 1:].astype(dtype), rotations.astype(dtype))
    assert rotated.dtype == dtype and rotated.shape == sh[:, 1:].shape
    turned = np.concatenate([sh[:, :1], rotated.astype(np.float64)], axis=1)
    expected = eval_sh(degree, sh, dirs)
    np.testing.assert_allclose(eval_sh(degree, turned, np.einsum("nij,nj->ni", rotations, dirs)), expected,
                               atol=tol * np.abs(expected).max())


def test_single_rotation_applies_to_every_splat():
    rng = np.random.default_rng(7)
    sh = rng.normal(size=(20, 15, 3))
    rotation = random_rotations(rng, 1)[0]
    np.testing.assert_allclose(rotate_sh(sh, rotation), rotate_sh(sh, np.broadcast_to(rotation, (20, 3, 3))),
                               atol=1e-12)


def test_blender_f_rest_rows_rotate_like_the_gsplat_layout():
    rng = np.random.default_rng(10)
    sh = rng.normal(size=(30, 15, 3)).astype(np.float32)
    rotations = random_rotations(rng, 30).astype(np.float32)
    f_rest = sh.transpose(2, 1, 0).reshape(45, 30)        # PLY / Blender attribute f_rest_{c*15+j}
    rotated = rotate_sh_components(f_rest.reshape(3, 15, 30).transpose(1, 0, 2), rotations)
    np.testing.assert_allclose(rotated, rotate_sh(sh, rotations).transpose(1, 2, 0), atol=1e-6)


def test_wigner_blocks_are_orthogonal_and_compose():
    rng = np.random.default_rng(8)
    a, b = random_rotations(rng, 10), random_rotations(rng, 10)
    blocks_a, blocks_b = sh_rotation_matrices(a), sh_rotation_matrices(b)
    blocks_ab = sh_rotation_matrices(a @ b)
    assert [m.shape for m in blocks_a] == [(10, 3, 3), (10, 5, 5), (10, 7, 7)]
    for ma, mb, mab in zip(blocks_a, blocks_b, blocks_ab):
        eye = np.broadcast_to(np.eye(ma.shape[-1]), ma.shape)
        np.testing.assert_allclose(ma @ ma.transpose(0, 2, 1), eye, atol=1e-10)   # the 3DGS basis is orthonormal
        np.testing.assert_allclose(mab, ma @ mb, atol=1e-10)                      # rotating twice = once by a b
    identity = sh_rotation_matrices(np.eye(3))
    for m in identity:
        np.testing.assert_allclose(m[0], np.eye(m.shape[-1]), atol=1e-12)
    sh = rng.normal(size=(10, 15, 3))
    by_blocks = np.concatenate([m @ sh[:, lo:hi] for m, (lo, hi) in zip(blocks_a, [(0, 3), (3, 8), (8, 15)])], 1)
    np.testing.assert_allclose(rotate_sh(sh, a), by_blocks, atol=1e-12)


def test_degree_one_turns_like_a_vector():
    # The degree-1 colour is C1 * (-y, z, -x) . coeffs, i.e. a dot product with g = C1 * (-c3, -c1, c2):
    # rotating the splat by R must rotate g by R.
    rng = np.random.default_rng(9)
    coeffs = rng.normal(size=(1, 3, 1))
    rotation = random_rotations(rng, 1)
    g = np.array([-coeffs[0, 2, 0], -coeffs[0, 0, 0], coeffs[0, 1, 0]])
    c = rotate_sh(coeffs, rotation)[0, :, 0]
    np.testing.assert_allclose(np.array([-c[2], -c[0], c[1]]), rotation[0] @ g, atol=1e-12)


def test_degree_zero_and_bad_shapes():
    assert rotate_sh(np.zeros((4, 0, 3)), np.eye(3)).shape == (4, 0, 3)
    with pytest.raises(ValueError, match="SH coefficients"):
        rotate_sh(np.zeros((4, 5, 3)), np.eye(3))
    with pytest.raises(ValueError, match="rotations"):
        rotate_sh(np.zeros((4, 3, 3)), np.eye(4))
    with pytest.raises(ValueError, match="3 rotations for 4"):
        rotate_sh(np.zeros((4, 3, 3)), np.broadcast_to(np.eye(3), (3, 3, 3)))
