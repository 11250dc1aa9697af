"""The train / eval / render / doctor commands as a user (and the Blender extension) runs them."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from milo_backend.config import Schedule, TrainConfig
from milo_backend.errors import MiloError
from milo_backend.events import NullReporter
from milo_backend.gaussians.splat_ply import read_splat_ply


ITER = 300  # the whole schedule (low-res, densify, re-init, simplify, SH, depth-normal)


@pytest.fixture(scope="module")
def trained(tiny_scene, tmp_path_factory, cli) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("runs") / "sortie ünïcode"
    code, events, err = cli.run("train", tiny_scene, out, "--iterations", ITER, "--device", "cpu",
                                "--max-size", 48, "--preview-every", 150)
    assert code == 0, err + json.dumps(events[-3:])
    return out, events


def test_train_writes_every_output(trained):
    out, events = trained
    kinds = {e["kind"] for e in events if e["event"] == "artifact"}
    assert {"cameras", "preview", "checkpoint", "gaussians", "loss_curve"} <= kinds
    done = events[-1]
    assert done["event"] == "done" and Path(done["outputs"]["gaussians"]) == (out / "gaussians.ply").resolve()
    splats = read_splat_ply(out / "gaussians.ply")  # standard 3DGS PLY that other tools load
    assert splats["sh"].shape[1] == 16 and len(splats["means"]) > 100
    assert np.isfinite(splats["means"]).all()
    cams = json.loads((out / "cameras.json").read_text())["cameras"]
    assert len(cams) == 16 and sum(c["split"] == "test" for c in cams) == 2
    assert (out / "previews" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "previews").glob("train_*.png")) == ["train_000150.png", "train_000300.png"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e for e in log if e["event"] != "log"] == [e for e in events if e["event"] != "log"]


def test_progress_events_carry_step_eta_loss_psnr(trained):
    _, events = trained
    prog = [e for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert prog[-1]["step"] == ITER and prog[-1]["total"] == ITER
    assert all({"loss", "psnr", "eta_s"} <= set(e) for e in prog)
    assert any(e["eta_s"] is not None for e in prog)
    steps = [e["step"] for e in prog]
    assert steps == sorted(steps)


def test_training_learns_the_scene(trained):
    """The exported Gaussians reproduce the training photos far better than the first iterations did."""
    from milo_backend.data.images import ImageCache
    from milo_backend.evaluate import load_splats, read_cameras
    from milo_backend.losses import psnr
    from milo_backend.render import render

    out, events = trained
    first = np.mean([e["psnr"] for e in events if e["event"] == "progress" and e["stage"] == "train"][:3])
    splats, degree = load_splats(out, torch.device("cpu"))
    images = ImageCache()
    with torch.no_grad():
        final = np.mean([float(psnr(render(splats, c, sh_degree=degree).color.clamp(0, 1), images.get(c)[0]))
                         for c in read_cameras(out / "cameras.json") if c.split == "train"])
    assert final > first + 5, (first, final)


def test_random_start_reaches_a_useful_held_out_psnr(trained, cli):
    """The tiny scene triangulates no point, so training starts from plane-sweep points and random
    Gaussians. Held out: 11.5 dB before the random start and the simplification floor (a collapsed set),
    22.0 dB with a random start alone, 23.0 dB with plane-sweep points in it."""
    out, events = trained
    start = [e["message"] for e in events if e["event"] == "warning" and "random Gaussians" in e["message"]]
    assert start
    # with the known poses, plane-sweep stereo places part of the start on the surfaces
    assert int(re.search(r"starting from (\d+) plane-sweep points", start[0]).group(1)) > 100
    code, ev, err = cli.run("eval", out, "--device", "cpu")
    assert code == 0, err
    assert ev[-1]["outputs"]["psnr"] > 22.4  # measured 23.0 dB (22.05 without the plane sweep)


def test_the_mesh_is_no_finer_than_the_photos(trained):
    """At most 2 pivots per pixel of a view (48x48 here): a mesh finer than the photos is shaped by depth
    noise (the fox at 240 px crumpled with 145k pivots for 32k-pixel views)."""
    _, events = trained
    built = [re.fullmatch(r"mesh: (\d+) of (\d+) Gaussians, (\d+) pivots", e["message"])
             for e in events if e["event"] == "log"]
    built = [m for m in built if m]
    assert built, "the mesh phase did not start"
    for m in built:
        chosen, total, pivots = map(int, m.groups())
        assert total > chosen and pivots <= 2 * 48 * 48  # the budget binds: more Gaussians than it takes


def test_eval_and_render_commands(trained, tmp_path, cli):
    out, _ = trained
    code, events, err = cli.run("eval", out, "--device", "cpu")
    assert code == 0, err
    metrics = events[-1]["outputs"]
    assert metrics["views"] == 2 and 5 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    assert [v["name"] for v in metrics["per_view"]] == ["images/0008.png", "images/0016.png"]
    assert json.loads((out / "eval.json").read_text())["psnr"] == pytest.approx(metrics["psnr"])
    # the mesh's own evidence: no sparse points in this scene (random start), so accuracy says so
    mesh = metrics["mesh"]
    assert "unavailable" in mesh["sparse_point_accuracy"]
    assert mesh["mesh_views"]["views"] == 2 and 5 < mesh["mesh_views"]["psnr"] < 60
    assert mesh["mesh_views"]["gaussians_psnr"] == pytest.approx(metrics["psnr"])
    assert 0 <= mesh["roughness"]["median_deg"] <= mesh["roughness"]["p90_deg"] <= 180
    assert json.loads((out / "mesh_eval.json").read_text())["without_ground_truth"]["roughness"] == mesh["roughness"]
    assert sorted(p.name for p in (out / "previews").glob("eval_mesh_*.png")) == ["eval_mesh_0008.png",
                                                                                 "eval_mesh_0016.png"]

    code, events, err = cli.run("render", out / "gaussians.ply", "--cameras", out / "cameras.json",
                                "--out", tmp_path / "rendus", "--device", "cpu")
    assert code == 0, err
    pngs = sorted((tmp_path / "rendus").glob("*.png"))
    assert len(pngs) == 16 and events[-1]["outputs"]["count"] == 16


@pytest.mark.parametrize("command", [("eval",), ("render", "--cameras", "{run}/cameras.json", "--out", "{run}/r"),
                                     ("extract", "--iterations", "2")])
def test_a_damaged_gaussians_ply_is_rebuilt_from_the_checkpoint(trained, tmp_path, cli, command):
    out, _ = trained
    run = tmp_path / "copie"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("mesh*", "previews"))
    original = (out / "gaussians.ply").read_bytes()
    (run / "gaussians.ply").write_bytes(original[: len(original) // 3])  # a truncated copy or a crash
    args = [a.format(run=run) for a in command[1:]]
    code, events, err = cli.run(command[0], run, *args, "--device", "cpu")
    assert code == 0, err + json.dumps(events[-3:])
    warnings = [e for e in events if e["event"] == "warning" and "gaussians.ply" in e["message"]]
    assert len(warnings) == 1 and "rebuilt" in warnings[0]["message"], events
    # the finished run's last checkpoint is its final state: the rebuilt file is the one train wrote
    assert (run / "gaussians.ply").read_bytes() == original


def test_existing_run_is_never_overwritten(trained, cli):
    out, _ = trained
    before = (out / "gaussians.ply").stat().st_mtime_ns
    code, events, _ = cli.run("train", out, out, "--iterations", 5)
    err = events[-1]
    assert code == 2 and err["event"] == "error" and "--resume" in err["hint"]
    assert (out / "gaussians.ply").stat().st_mtime_ns == before


def test_resume_without_checkpoints_keeps_the_finished_run(trained, tiny_scene, tmp_path, cli):
    """A finished run whose checkpoints/ folder was deleted: --resume once started from scratch and
    overwrote gaussians.ply without a word."""
    import shutil

    out, _ = trained
    copy = tmp_path / "finished run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
    before = (copy / "gaussians.ply").read_bytes()
    code, events, _ = cli.run("train", tiny_scene, copy, "--iterations", 5, "--device", "cpu", "--resume")
    assert code == 2 and events[-1]["event"] == "error" and "no checkpoint" in events[-1]["message"]
    assert "extract" in events[-1]["hint"]
    assert (copy / "gaussians.ply").read_bytes() == before


def test_a_second_job_into_a_busy_run_folder_is_refused_and_a_killed_one_leaves_no_lock(tiny_scene, tmp_path,
                                                                                          cli):
    from milo_backend.run_folder import locked_run_folder

    out = tmp_path / "dossier partagé"
    first = subprocess.Popen([sys.executable, "-m", "milo_backend", "train", str(tiny_scene), str(out),
                              "--iterations", "2000", "--device", "cpu", "--no-mesh", "--json"],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:  # until the first job is training
            if '"stage": "train", "step"' in line:
                break
        for command in (["train", tiny_scene, out, "--iterations", 5, "--device", "cpu"],
                        ["train", tiny_scene, out, "--iterations", 5, "--device", "cpu", "--resume"],
                        ["extract", out, "--device", "cpu"]):
            code, events, err = cli.run(*command)
            assert code == 2 and events[-1]["event"] == "error", err
            assert "another MILo job is writing into" in events[-1]["message"]
            assert f"pid {first.pid}" in events[-1]["message"] and "cancel" in events[-1]["hint"]
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.communicate(timeout=60)
    with locked_run_folder(out):  # the kernel released the dead job's lock
        pass


def test_when_the_reader_of_the_events_goes_away_training_checkpoints_and_exits(tiny_scene, tmp_path):
    """Blender quit or was killed mid-run: the backend (in its own process group) must not train on as an
    orphan. Its stdout pipe closes; the next event fails to reach anyone."""
    out = tmp_path / "orphelin"
    proc = subprocess.Popen([sys.executable, "-m", "milo_backend", "train", str(tiny_scene), str(out),
                             "--iterations", "2000", "--device", "cpu", "--no-mesh", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if '"stage": "train", "step"' in line:
            break
    proc.stdout.close()  # the reader is gone
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the backend kept training after its reader had gone") from None
    assert proc.returncode == 130, err[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert log[-1]["event"] == "cancelled" and Path(log[-1]["checkpoint"]).is_file()
    assert "Traceback" not in err


def test_sigint_saves_a_checkpoint_and_resume_continues(tiny_scene, tmp_path, cli):
    out = tmp_path / "run with spaces"
    # long enough that the run cannot end before the signal arrives: progress is reported every few
    # steps, and on a fast machine 60 iterations once ended first (exit 0 instead of 130)
    iterations = "200"
    proc = subprocess.Popen([sys.executable, "-m", "milo_backend", "train", str(tiny_scene), str(out),
                             "--iterations", iterations, "--device", "cpu", "--no-mesh", "--json"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:  # wait until training is really running: its first progress event
        lines.append(line)
        event = cli.parse(line)
        if event and event[0]["event"] == "progress" and event[0]["stage"] == "train":
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    events = cli.parse("".join(lines) + rest)
    assert proc.returncode == 130 and events[-1]["event"] == "cancelled"
    assert Path(events[-1]["checkpoint"]).exists()
    stopped_at = max(e["step"] for e in events if e["event"] == "progress" and e["stage"] == "train")

    assert stopped_at < int(iterations)
    code, events, err = cli.run("train", tiny_scene, out, "--iterations", iterations, "--device", "cpu",
                                "--no-mesh", "--resume")
    assert code == 0, err
    steps = [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert steps[0] >= stopped_at and steps[-1] == int(iterations)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_scene, tmp_path, monkeypatch):
    from milo_backend import losses, train as train_mod

    real = losses.photometric_loss
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] > 25 else value

    monkeypatch.setattr(train_mod.losses, "photometric_loss", diverging)
    cfg = TrainConfig(iterations=40, device="cpu", checkpoint_every=10, preview_every=100)
    with pytest.raises(MiloError) as exc:
        train_mod.train(tiny_scene, tmp_path / "run", cfg, NullReporter())
    assert "iteration 26" in exc.value.message and "latest.pt" in exc.value.hint
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["run"]["iteration"] == 20
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["params"].values())


def test_gpu_out_of_memory_saves_the_run_names_a_smaller_preset_and_resume_continues(tiny_scene, tmp_path,
                                                                                      monkeypatch):
    from milo_backend import train as train_mod
    from milo_backend.checkpoint import load_checkpoint

    from milo_backend import losses

    real_loss, calls = losses.photometric_loss, {"n": 0}

    def loss_until_memory_runs_out(*args, **kwargs):  # the GPU's memory runs out in the 8th training step
        calls["n"] += 1
        if calls["n"] >= 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(*args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(losses, "photometric_loss", loss_until_memory_runs_out)
    with pytest.raises(MiloError) as exc:
        train_mod.train(tiny_scene, run, TrainConfig(iterations=12, device="cpu", preset="default", mesh=False,
                                                    extract_mesh=False, checkpoint_every=12), NullReporter())
    assert "out of memory" in exc.value.message and "--preset lowres" in exc.value.hint
    assert "--resume" in exc.value.hint and str(run / "checkpoints") in exc.value.message
    saved = load_checkpoint(run)["run"]["iteration"]
    assert saved == 7  # the state when memory ran out (no periodic checkpoint before the end here)
    monkeypatch.setattr(losses, "photometric_loss", real_loss)
    outputs = train_mod.train(tiny_scene, run, TrainConfig(iterations=12, device="cpu", preset="lowres", mesh=False,
                                                           extract_mesh=False), NullReporter(), resume=True)
    assert Path(outputs["gaussians"]).is_file() and load_checkpoint(run)["run"]["iteration"] == 12


def test_bad_options_are_user_errors(tiny_scene, tmp_path, cli):
    code, events, _ = cli.run("train", tmp_path / "missing folder", tmp_path / "out", "--iterations", 5)
    assert code == 2 and events[-1]["event"] == "error" and "missing folder" in events[-1]["message"]
    if not torch.cuda.is_available():
        code, events, _ = cli.run("train", tiny_scene, tmp_path / "out2", "--device", "cuda")
        assert code == 2 and "CUDA" in events[-1]["message"]


def test_doctor_reports_the_environment(cli):
    code, events, err = cli.run("doctor")
    assert code == 0, err
    report = events[-1]["outputs"]
    assert report["torch"] == torch.__version__ and report["cuda_available"] == torch.cuda.is_available()
    assert report["gsplat"]["import"] is True and report["device"] in ("cpu", "cuda")


def test_schedule_scales_with_iterations():
    """A short run follows the same sequence of phases as the published 18k schedule."""
    def phases(s: Schedule):
        return [s.densify_from, s.depth_reinit_at, s.densify_until, s.simplify_at, s.simplify2_at, s.mesh_from,
                s.sdf_reset_until, s.iterations]

    full, short = Schedule(18_000), Schedule(2_000)
    assert phases(full) == [500, 2000, 3000, 3000, 8000, 8001, 13000, 18000]
    short_phases = phases(short)
    assert short_phases[1] is None  # the depth re-initialisation would come before the renders settle
    del short_phases[1]
    assert short_phases == sorted(short_phases)
    assert Schedule(9_000).depth_reinit_at == 1000 and Schedule(8_000).depth_reinit_at is None
    assert not Schedule(9_000).is_densify_step(1000)  # that iteration re-initialises instead
    assert short.simplify_at / short.iterations == pytest.approx(full.simplify_at / full.iterations, abs=1e-3)
    assert [full.sh_degree(i) for i in (0, 2999, 3000, 4000, 5000, 17000)] == [0, 0, 1, 2, 3, 3]
    assert short.sh_degree(short.full_resolution_from) == 1 and short.sh_degree(2000) == 3
    assert short.densify_every >= 10  # never densify from a single view's gradients


def test_console_bar_keeps_the_stage_elapsed_time_across_other_lines():
    """A line of text (a preview written) closes the bar; the re-opened bar must not restart its
    clock, or the console shows a few seconds elapsed for a run that has trained for minutes."""
    import io

    from milo_backend.events import Reporter

    rep = Reporter(stream=io.StringIO())
    rep.progress("train", 10, 100)
    first = rep._bars["train"].start_t
    time.sleep(0.05)
    rep.artifact("preview", "/tmp/x.png")
    rep.progress("train", 20, 100)
    assert rep._bars["train"].start_t == first
    rep.stage("train", "a new training stage")
    time.sleep(0.05)
    rep.progress("train", 1, 100)
    assert rep._bars["train"].start_t > first
    rep.close()


def test_flatness_term_thins_the_smallest_axis_and_is_scale_free():
    from milo_backend import losses

    log_s = torch.log(torch.tensor([[0.3, 0.2, 0.05], [0.1, 0.02, 0.4]])).requires_grad_()
    value = losses.flatness_loss(log_s.exp(), extent=2.0)
    assert value.item() == pytest.approx((0.05 + 0.02) / 2 / 2.0)
    value.backward()
    grad = log_s.grad
    assert grad[0, 2] > 0 and grad[1, 1] > 0  # descent shrinks the thin axis ...
    assert grad[0, :2].abs().sum() == 0 and grad[1, [0, 2]].abs().sum() == 0  # ... and only that one
    # the same scene in other units (x10) gives the same value
    assert losses.flatness_loss(10 * log_s.exp(), extent=20.0).item() == pytest.approx(value.item())
    # trained with it on (the default), it is part of the recorded configuration
    assert TrainConfig().lambda_flat > 0


@pytest.mark.parametrize("args, flag", [
    (("train", "photos", "out", "--iterations", "-5"), "--iterations"),
    (("train", "photos", "out", "--max-size", "0"), "--max-size"),
    (("train", "photos", "out", "--iterations", "many"), "--iterations"),
    (("eval", "run", "--gt", "gt.obj", "--threshold", "0"), "--threshold"),
    (("sfm", "photos", "out", "--threads", "0"), "--threads"),
    (("train", "photos", "out", "--no-such-flag"), "--no-such-flag"),
])
def test_a_bad_command_line_gets_one_error_event_naming_the_argument(args, flag, cli, tmp_path):
    """--json callers (the extension) read events: a rejected command line is one `error` event and exit
    2, never a silent exit or a run with a nonsense value."""
    code, events, err = cli.run(*args)
    assert code == 2 and len(events) == 1, (events, err)
    assert events[0]["event"] == "error" and flag in events[0]["message"] and events[0]["hint"]
    assert not (tmp_path / "out").exists()
    # without --json: the same message on stderr, no traceback
    proc = subprocess.run([sys.executable, "-m", "milo_backend", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr and not proc.stdout


# Mounts a small tmpfs in a private mount namespace (no root needed where user namespaces are allowed),
# fills it to leave $2 KB free, then runs the command that follows with the disk as $1.
_FULL_DISK = """
mount -t tmpfs -o size=3m tmpfs "$1" || exit 97
dd if=/dev/zero of="$1/filler" bs=1k count=$((3072 - $2)) 2>/dev/null
shift 2
"$@"
"""


def on_small_disk(disk: Path, free_kb: int, *command) -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small disk")
    disk.mkdir(exist_ok=True)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", _FULL_DISK, "sh", str(disk), str(free_kb),
                           *map(str, command)], capture_output=True, text=True, timeout=600)
    if proc.returncode == 97 or (proc.returncode != 0 and "unshare" in proc.stderr):
        pytest.skip(f"cannot mount a small disk here: {proc.stderr.strip()[-200:]}")
    return proc


def test_a_full_disk_before_the_feature_database_is_a_user_error(tiny_scene, tmp_path, cli):
    # pycolmap's SQLite aborts the whole process on a full disk (exit 134, a C++ stack): refuse before it
    disk = tmp_path / "small disk"
    proc = on_small_disk(disk, 480, sys.executable, "-m", "milo_backend", "train", tiny_scene, disk / "run",
                         "--iterations", 40, "--device", "cpu", "--max-size", 48, "--json")
    errors = [e for e in cli.parse(proc.stdout) if e["event"] == "error"]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert str(disk / "run") in errors[0]["message"] and "MB free" in errors[0]["message"], errors[0]
    assert "needs about" in errors[0]["message"] and "another disk" in errors[0]["hint"]


_SAVE_ON_FULL_DISK = """
import json, sys, torch
from pathlib import Path
from milo_backend.checkpoint import save_checkpoint
from milo_backend.errors import MiloError
out = Path(sys.argv[1]) / "run"
save_checkpoint(out, {"params": torch.zeros(1000)})       # a small one fits
try:
    save_checkpoint(out, {"params": torch.zeros(500_000)})  # 2 MB does not
except MiloError as exc:
    print(json.dumps({"message": exc.message, "hint": exc.hint,
                      "files": sorted(p.name for p in (out / "checkpoints").iterdir()),
                      "kept": torch.load(out / "checkpoints" / "latest.pt")["params"].numel()}))
"""


def test_a_checkpoint_that_fills_the_disk_is_a_user_error_and_keeps_the_last_one(tmp_path):
    # torch.save reports a full disk as a RuntimeError without errno ("unexpected pos ...")
    disk = tmp_path / "small disk"
    proc = on_small_disk(disk, 480, sys.executable, "-c", _SAVE_ON_FULL_DISK, disk)
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert "is full" in result["message"] and "latest.pt" in result["message"] and "MB" in result["message"]
    assert result["files"] == ["latest.pt"] and result["kept"] == 1000  # no temp file, the old one intact


def test_the_config_round_trips_through_its_file(tmp_path):
    from milo_backend.config import read_run_config

    cfg = TrainConfig(iterations=1234, preset="lowres", scene="indoor", max_size=320, white_background=True, seed=7)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg.to_json(), "option_of_a_newer_version": 1}))
    assert read_run_config(path) == cfg and read_run_config(path).schedule == Schedule(1234)
    assert read_run_config(tmp_path / "missing.json") == TrainConfig()  # a run from before config.json
    path.write_text("[1, 2")
    with pytest.raises(MiloError) as err:
        read_run_config(path)
    assert str(path) in err.value.message


def test_console_bar_shows_the_events_eta_from_the_first_steps():
    import io

    from milo_backend.events import Reporter

    stream = io.StringIO()
    rep = Reporter(stream=stream)
    rep.progress("train", 1, 100, loss=0.5)
    time.sleep(0.2)
    rep.progress("train", 3, 100, loss=0.4)  # 0.1 s per step: about 10 s left
    rep.close()
    last = stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "3/100" in last and "loss=0.4" in last
    eta = re.search(r"ETA (\d+):(\d+)", last)
    assert eta and 5 <= int(eta.group(1)) * 60 + int(eta.group(2)) <= 60, last


def test_extract_tsdf_baseline_writes_its_own_mesh(trained, cli):
    out, _ = trained
    before = (out / "mesh.ply").read_bytes() if (out / "mesh.ply").exists() else None
    code, events, err = cli.run("extract", out, "--tsdf", 32, "--device", "cpu")
    assert code == 0, err
    outputs = events[-1]["outputs"]
    assert Path(outputs["mesh_tsdf"]) == (out / "mesh_tsdf.ply").resolve() and outputs["faces"] > 100
    from milo_backend.mesh_io import read_mesh, read_vertex_colors
    verts, faces = read_mesh(out / "mesh_tsdf.ply")
    assert len(faces) == outputs["faces"] and read_vertex_colors(out / "mesh_tsdf.ply").shape == (len(verts), 3)
    assert ((out / "mesh.ply").read_bytes() if before is not None else None) == before  # MILo's mesh untouched
