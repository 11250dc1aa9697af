"""The offline GPU check kit: its budget, its time cap, and its dry run end to end on this machine."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOX = ROOT.parent / "shared" / "data" / "fox"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "gpu_kit" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_kit, gpu_check = _load("build_kit"), _load("gpu_check")


def test_the_budget_counts_the_tree_and_refuses_a_kit_that_would_not_travel():
    tree = build_kit.tree_bytes()
    assert 100_000 < tree < 16 * 2**20  # the working tree as git sends it, the kit folder excluded
    build_kit.check_budget(tree, 40 * 2**20)
    with pytest.raises(SystemExit, match=r"does not fit: working tree .* \+ kit 63.0 MiB"):
        build_kit.check_budget(tree, 63 * 2**20)


def test_a_step_past_its_limit_is_stopped_and_the_results_are_kept(tmp_path):
    check = gpu_check.Check(tmp_path, cap_s=30, dry_run=True)
    t0 = time.monotonic()
    code, _ = check.run("tests", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1.0)
    assert code is None and time.monotonic() - t0 < 30
    check.record("tests", status="stopped")
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["tests"]["status"] == "stopped"
    assert "started" in (tmp_path / "gpu_check.log").read_text()


def test_extrapolation_uses_the_recent_rate():
    progress = [(10.0, 100, 1000), (20.0, 300, 1000), (60.0, 500, 1000)]  # slowed down to 5 it/s
    out = gpu_check.extrapolate(progress, {})
    assert out["iterations_done"] == 500 and out["recent_iterations_per_s"] == pytest.approx(5.0)
    assert out["training_s_extrapolated"] == pytest.approx(10 + 900 / 5.0)


def test_bad_arguments_are_refused_with_the_value(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_kit" / "gpu_check.py"), "--skip", "fox,cake",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--skip cake" in run.stderr


@pytest.mark.skipif(not (FOX / "transforms.json").is_file(), reason="needs ../shared/data/fox")
def test_dry_run_installs_offline_and_runs_every_step_that_needs_no_gpu(tmp_path):
    kit = tmp_path / "kit"
    manifest = build_kit.build(kit, FOX, fox_scale=0.25, with_pycolmap=False)  # downloads the wheels once
    assert set(manifest["wheels"]) >= {"backend", "gsplat", "diffrp-nvdiffrast", "shull", "plyfile"}
    assert manifest["kit_bytes"] + manifest["tree_bytes"] < 64 * 2**20
    out = tmp_path / "out put"
    run = subprocess.run(["bash", str(ROOT / "run.sh"), "gpu-check", "--dry-run", "--kit", str(kit), "--out", str(out)],
                         capture_output=True, text=True, timeout=1800)
    results = json.loads((out / "gpu_check.json").read_text())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    steps = results["steps"]
    assert results["dry_run"] and results["ok"]
    assert steps["install"]["backend_from_kit"] and "gsplat-1.5.3-py3-none-any.whl" in steps["install"]["installed"]
    assert steps["kernels"]["plans"]["gsplat"]["active"] == "torch"
    assert steps["tests"]["status"] == "ok" and steps["tests"]["tests"] > 50 and steps["tests"]["failures"] == 0
    assert steps["bench"]["status"] == "skipped"
    assert steps["fox"]["status"] == "ok" and steps["fox"]["iterations_done"] == 40
    assert (out / "gpu_check.log").is_file() and (out / "pytest.xml").is_file()
