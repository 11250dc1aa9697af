"""The torch-free 3DGS PLY layer: exact round trip, standard property layout, foreign files, bad files."""
import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from milo_backend.errors import MiloError
from milo_backend.gaussians.splat_ply import property_names, read_splat_ply, write_splat_ply


def _random_splats(n, k, seed=0):
    rng = np.random.default_rng(seed)
    return dict(means=rng.normal(size=(n, 3)).astype(np.float32),
                sh=rng.normal(size=(n, k, 3)).astype(np.float32),
                opacity_logits=rng.normal(size=n).astype(np.float32),
                log_scales=rng.normal(size=(n, 3)).astype(np.float32) - 3,
                quats=rng.normal(size=(n, 4)).astype(np.float32))


@pytest.mark.parametrize("k", [1, 4, 9, 16])
def test_round_trip_is_exact_for_every_sh_degree(tmp_path, k):
    splats = _random_splats(37, k)
    path = tmp_path / "dossier avec espace é" / "splats ü.ply"
    write_splat_ply(path, **splats)
    back = read_splat_ply(path)
    assert set(back) == set(splats)
    for key, value in splats.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value)
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"


def test_file_layout_is_standard_3dgs(tmp_path):
    splats = _random_splats(5, 16)
    path = tmp_path / "s.ply"
    write_splat_ply(path, **splats)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == property_names(16)
    assert len(property_names(16)) == 62
    # f_rest is channel-major: all red coefficients first, then green, then blue
    np.testing.assert_array_equal(vertex["f_rest_0"], splats["sh"][:, 1, 0])
    np.testing.assert_array_equal(vertex["f_rest_14"], splats["sh"][:, 15, 0])
    np.testing.assert_array_equal(vertex["f_rest_15"], splats["sh"][:, 1, 1])
    np.testing.assert_array_equal(vertex["f_rest_44"], splats["sh"][:, 15, 2])
    np.testing.assert_array_equal(vertex["rot_0"], splats["quats"][:, 0])
    np.testing.assert_array_equal(vertex["nx"], 0)


def test_foreign_degree0_file_without_normals_and_float64_loads(tmp_path):
    n = 4
    # unusual property order (read by name, not position), float64, ASCII, an extra property
    names = ["rot_0", "rot_1", "rot_2", "rot_3", "x", "z", "y", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "extra"]
    rec = np.zeros(n, dtype=[(name, "<f8") for name in names])
    rec["x"] = np.arange(n)
    rec["y"] = -1
    rec["f_dc_1"] = 0.5
    rec["rot_0"] = 1
    path = tmp_path / "foreign.ply"
    PlyData([PlyElement.describe(rec, "vertex")], text=True).write(str(path))
    back = read_splat_ply(path)
    assert back["sh"].shape == (n, 1, 3)
    np.testing.assert_array_equal(back["means"], np.stack([np.arange(n), -np.ones(n), np.zeros(n)], 1))
    np.testing.assert_array_equal(back["sh"][:, 0, 1], 0.5)
    np.testing.assert_array_equal(back["quats"][:, 0], 1)


def test_mesh_ply_is_rejected_with_a_hint(tmp_path):
    verts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    path = tmp_path / "mesh.ply"
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(str(path))
    with pytest.raises(MiloError) as err:
        read_splat_ply(path)
    assert "mesh.ply" in err.value.message and "f_dc_0" in err.value.message
    assert err.value.hint and err.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"not a ply at all\n", b"ply\nformat binary_little_endian 1.0\n"])
def test_garbage_file_is_rejected(tmp_path, content):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(MiloError) as err:
        read_splat_ply(path)
    assert "bad.ply" in err.value.message


def test_missing_file_and_odd_sh_count_are_rejected(tmp_path):
    with pytest.raises(MiloError, match="not found"):
        read_splat_ply(tmp_path / "nope.ply")
    splats = _random_splats(3, 4)
    path = tmp_path / "odd.ply"
    write_splat_ply(path, **splats)
    ply = PlyData.read(str(path))
    data = ply["vertex"].data
    keep = [name for name in data.dtype.names if name != "f_rest_8"]
    from numpy.lib import recfunctions
    PlyData([PlyElement.describe(recfunctions.repack_fields(data[keep]), "vertex")]).write(str(path))
    with pytest.raises(MiloError, match="f_rest"):
        read_splat_ply(path)


def test_module_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys; import milo_backend.gaussians.splat_ply; "
            "assert 'torch' not in sys.modules, 'splat_ply pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
