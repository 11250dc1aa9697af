"""GaussianModel <-> 3DGS PLY: exact round trip, baked 3D filter, foreign degree-0 files, bad files."""
import numpy as np
import pytest
import torch

from milo_backend.errors import MiloError
from milo_backend.gaussians.model import GaussianModel
from milo_backend.gaussians.ply import read_ply, write_ply
from milo_backend.gaussians.splat_ply import read_splat_ply, write_splat_ply


def random_model(n=20, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    params = {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) - 3,
              "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g) * 3,
              "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, k - 1, 3, generator=g)}
    return GaussianModel(params, max_sh_degree=degree)


def test_round_trip_without_filter_is_exact(tmp_path):
    m = random_model()
    path = write_ply(m, tmp_path / "ünïcode dir" / "gaussians.ply")
    back = read_ply(path)
    assert back.max_sh_degree == 3 and back.active_sh_degree == 3
    for key in m.params.keys():
        assert torch.equal(back.params[key], m.params[key]), key
    assert torch.all(back.state["filter_3d"] == 0)


def test_baked_filter_reproduces_the_filtered_splats(tmp_path):
    m = random_model()
    m.state["filter_3d"] = torch.rand(len(m), generator=torch.Generator().manual_seed(1)) * 0.05
    m.state["filter_3d"][:3] = 0  # unfiltered Gaussians stay bit-exact
    back = read_ply(write_ply(m, tmp_path / "g.ply"))
    want, got = m.splats(), back.splats()
    assert torch.allclose(got.scales, want.scales, rtol=1e-5)
    assert torch.allclose(got.opacities, want.opacities, rtol=1e-4, atol=1e-7)
    assert torch.equal(got.means, want.means) and torch.allclose(got.quats, want.quats)
    assert torch.equal(back.params["scales"][:3], m.params["scales"][:3])
    assert torch.equal(back.params["opacities"][:3], m.params["opacities"][:3])
    # the filter only ever blurs: larger scales, lower opacity
    assert torch.all(back.params["scales"] >= m.params["scales"])
    assert torch.all(back.params["opacities"] <= m.params["opacities"])


def test_lower_degree_model_writes_fewer_coefficients(tmp_path):
    m = random_model(degree=1)
    path = write_ply(m, tmp_path / "d1.ply")
    assert read_splat_ply(path)["sh"].shape == (20, 4, 3)
    assert read_ply(path).params["shN"].shape == (20, 3, 3)


def test_foreign_degree0_file_loads_and_renders_its_colours(tmp_path):
    n = 5
    sh = np.zeros((n, 1, 3), np.float32)
    sh[:, 0, 0] = 1.0
    path = tmp_path / "foreign.ply"
    write_splat_ply(path, np.zeros((n, 3)), sh, np.zeros(n), np.full((n, 3), -2.0), np.tile([1, 0, 0, 0], (n, 1)))
    m = read_ply(path)
    assert m.max_sh_degree == 0 and m.params["shN"].shape == (n, 0, 3)
    sp = m.splats()
    assert sp.sh.shape == (n, 1, 3) and torch.allclose(sp.opacities, torch.full((n,), 0.5))


def test_mesh_ply_raises_milo_error(tmp_path):
    path = tmp_path / "mesh.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                    "property float z\nend_header\n0 0 0\n")
    with pytest.raises(MiloError) as err:
        read_ply(path)
    assert "mesh.ply" in err.value.message
