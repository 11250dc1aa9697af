"""End to end on the tiny synthetic scene: train with the mesh in the loop, then `extract`; the flags."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from milo_backend.checkpoint import load_checkpoint
from milo_backend.config import TrainConfig
from milo_backend.events import NullReporter
from milo_backend.extract import mesh_stats
from milo_backend.mesh_io import read_mesh
from milo_backend.train import train

ITER = 60  # mesh phase from iteration 28: Delaunay every 2, labels once per epoch, 3 refinement steps


@pytest.fixture(scope="module")
def mesh_run(tiny_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("meshloop") / "run ü"
    reporter = NullReporter()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = TrainConfig(iterations=ITER, device="cpu", max_size=32, preset="verylowres", init_points=3000)
        outputs = train(tiny_scene, out, cfg, reporter)
    finally:
        torch.set_num_threads(before)
    return out, outputs, reporter


def test_training_with_the_mesh_writes_the_final_mesh(mesh_run):
    out, outputs, reporter = mesh_run
    assert outputs["mesh"] == str((out / "mesh.ply").resolve())
    v, f = read_mesh(out / "mesh.ply")
    assert len(f) > 100 and np.isfinite(v).all()
    stats = json.loads((out / "mesh_stats.json").read_text())
    assert stats == mesh_stats(len(v), f)
    assert set(stats) == {"vertices", "faces", "boundary_edges", "non_manifold_edges", "connected_components"}
    assert len(list((out / "previews").glob("mesh_*.png"))) == 3
    kinds = [e["kind"] for e in reporter.of("artifact")]
    assert {"mesh", "mesh_stats", "mesh_preview", "gaussians"} <= set(kinds)
    assert not [w for w in reporter.of("warning") if "mesh" in w["message"]]


def test_the_mesh_phase_starts_on_schedule_and_learns_in_the_loop(mesh_run):
    out, _, reporter = mesh_run
    cfg = TrainConfig(iterations=ITER)
    ckpt = load_checkpoint(out)
    state = ckpt["mesh"]
    assert state["started_at"] == cfg.schedule.mesh_from and state["disabled"] is None
    assert state["n_gaussians"] == ckpt["model"]["params"]["means"].shape[0]
    assert state["shift"].abs().max() > 0             # the SDF shift was optimised during training
    events = reporter.events
    start = next(i for i, e in enumerate(events) if e["event"] == "stage" and e["stage"] == "mesh")
    before = [e["step"] for e in events[:start] if e["event"] == "progress" and e["stage"] == "train"]
    assert max(before) < cfg.schedule.mesh_from


def test_extract_command_on_the_trained_run(mesh_run, cli):
    out, _, _ = mesh_run
    first = (out / "mesh.ply").stat().st_mtime_ns
    code, events, err = cli.run("extract", out, "--iterations", 2, "--remove-unseen", "--device", "cpu")
    assert code == 0, err + json.dumps(events[-3:])
    assert not [e for e in events if e["event"] == "warning"]  # trained with the mesh: no post-hoc warning
    assert (out / "mesh.ply").stat().st_mtime_ns != first
    v, f = read_mesh(events[-1]["outputs"]["mesh"])
    assert len(f) > 100
    assert json.loads((out / "mesh_stats.json").read_text())["vertices"] == len(v)


def test_a_missing_depth_prior_fails_before_training(tiny_scene, tmp_path, cli):
    code, events, _ = cli.run("train", tiny_scene, tmp_path / "out", "--iterations", 5, "--device", "cpu",
                              "--depth-prior", tmp_path / "depth anything.pt2")
    err = events[-1]
    assert code == 2 and err["event"] == "error" and "depth anything.pt2" in err["message"]
    assert "--depth-prior" in err["hint"]
    assert not [e for e in events if e["event"] == "stage" and e["stage"] == "train"]


def test_no_mesh_run_with_appearance_and_depth_prior(tiny_scene, tmp_path):
    """--no-mesh (the ablation baseline), --decoupled-appearance and --depth-prior together: the
    optional networks train, and the final mesh is extracted post hoc with a warning."""
    from test_meshloop_optional import exported_prior

    prior = exported_prior(tmp_path / "prior.pt2")
    reporter = NullReporter()
    cfg = TrainConfig(iterations=24, device="cpu", max_size=32, preset="verylowres", init_points=2000, mesh=False,
                      decoupled_appearance=True, depth_prior=prior)
    outputs = train(tiny_scene, tmp_path / "run", cfg, reporter)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["mesh"] == {"started_at": None}
    out_layer = ckpt["appearance"]["out.weight"]
    assert out_layer.abs().max() > 0                  # the appearance network left its zero start
    assert any("without the mesh" in w["message"] for w in reporter.of("warning"))
    assert "mesh" in outputs and read_mesh(outputs["mesh"])[1].shape[0] > 0
