"""Remote runs and batches on Ray. The cluster is a Ray head started by the test on 127.0.0.1 (free ports,
its own temporary folder) and stopped afterwards; no test touches an address outside the loopback range."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from milo_backend.errors import MiloError
from milo_backend.remote.client import Cluster, check_cluster, connect, parse_address
from milo_backend.remote.head import free_port, local_head
from milo_backend.remote.transfer import FolderMirror, FolderWatcher, PathMap, Upload, pack, unpack

ray = pytest.importorskip("ray")


# -- the transfer layer, no Ray ---------------------------------------------------------------------
def test_inputs_pass_in_small_chunks_and_unpack_whole(tmp_path):
    """Photos larger than the object store pass a bounded chunk at a time; names with spaces and accents
    survive; JSON files name the worker's folders there; the run's lock is not sent."""
    src = tmp_path / "my photos é"
    (src / "sub dir").mkdir(parents=True)
    blobs = {f"img {i}.png": os.urandom(5000 + 37 * i) for i in range(4)}
    for name, data in blobs.items():
        (src / "sub dir" / name).write_bytes(data)
    (src / "cameras.json").write_text(json.dumps({"image_path": str(src / "sub dir" / "img 0.png")}))
    (src / ".milo.lock").write_text("pid 1")
    chunks = []
    sent = pack([Upload(src, "in0/my photos é")], chunks.append, PathMap((("/remote/in0/my photos é", str(src)),)),
                chunk=4096)
    assert len(chunks) > 5 and max(map(len, chunks)) == 4096 and sent == sum(map(len, chunks))
    archive = tmp_path / "upload.tar"
    archive.write_bytes(b"".join(chunks))
    dest = tmp_path / "worker"
    unpack(archive, dest)
    got = dest / "in0" / "my photos é"
    assert {p.name: p.read_bytes() for p in (got / "sub dir").iterdir()} == blobs
    assert json.loads((got / "cameras.json").read_text())["image_path"] == "/remote/in0/my photos é/sub dir/img 0.png"
    assert not (got / ".milo.lock").exists()


def test_outputs_come_back_whole_with_local_paths(tmp_path):
    """A file bigger than one poll's budget arrives over several polls and appears only when whole; the
    log's new lines arrive as they are written, with the worker's paths replaced by local ones."""
    remote, local = tmp_path / "remote out", tmp_path / "local out"
    (remote / "checkpoints").mkdir(parents=True)
    watcher = FolderWatcher(remote)
    mirror = FolderMirror(local, PathMap(((str(remote), str(local)),)))
    big = os.urandom(10_000)
    (remote / "checkpoints" / "latest.pt").write_bytes(big)
    (remote / "log.jsonl").write_text(json.dumps({"event": "artifact", "path": f"{remote}/gaussians.ply"}) + "\n"
                                      + '{"event": "progress", "st')  # a line still being written
    polls = 0
    while True:
        pieces, more = watcher.changes(budget=3000)
        for p in pieces:
            mirror.apply(p)
        polls += 1
        if not (local / "checkpoints" / "latest.pt").exists():
            assert more
        if not more:
            break
    assert polls >= 4 and (local / "checkpoints" / "latest.pt").read_bytes() == big
    assert not list(local.rglob("*.milo-part"))
    log = (local / "log.jsonl").read_text().splitlines()
    assert log == [json.dumps({"event": "artifact", "path": f"{local}/gaussians.ply"})]
    with open(remote / "log.jsonl", "a") as fh:
        fh.write('ep": 5}\n')
    for p in watcher.changes()[0]:
        mirror.apply(p)
    assert [json.loads(line) for line in (local / "log.jsonl").read_text().splitlines()][1] == {
        "event": "progress", "step": 5}
    assert watcher.changes() == ([], False)  # nothing changed, nothing sent again
    # a file being written atomically is not sent; its rename is, and a removed file is removed here too
    (remote / ".mesh.ply.x1.tmp.ply").write_bytes(b"half")
    assert watcher.changes() == ([], False)
    os.replace(remote / ".mesh.ply.x1.tmp.ply", remote / "mesh.ply")
    (remote / "checkpoints" / "latest.pt").unlink()
    for p in watcher.changes()[0]:
        mirror.apply(p)
    assert (local / "mesh.ply").read_bytes() == b"half" and not (local / "checkpoints" / "latest.pt").exists()
    assert not list(local.rglob(".*tmp*"))


def test_a_gpu_is_asked_for_only_where_the_cluster_has_one():
    cpu_only = Cluster("ray://127.0.0.1:1", ({"CPU": 8.0}, {"CPU": 4.0}))
    assert cpu_only.job_resources("auto", None) == (8, 0)
    assert cpu_only.job_resources("cpu", 2) == (2, 0)
    with pytest.raises(MiloError, match="has no GPU"):
        cpu_only.job_resources("cuda", None)
    with pytest.raises(MiloError, match="more than 8 CPUs"):
        cpu_only.job_resources("cpu", 16)
    gpus = Cluster("x:1", ({"CPU": 16.0, "GPU": 2.0},))
    assert gpus.job_resources("auto", None) == (8, 1)
    assert gpus.job_resources("cpu", None) == (16, 0)
    with pytest.raises(MiloError, match="not a Ray cluster address"):
        parse_address("no-port-here")


# -- a real cluster on the loopback interface --------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    with local_head(num_cpus=2) as address:
        yield address


def _shape(events: list[dict]) -> list[tuple]:
    """What a user sees of a run, without the lines that say where it ran (and without the progress events,
    which are paced by the clock)."""
    return [(e["event"], e.get("stage"), e.get("kind")) for e in events
            if e["event"] not in ("log", "progress") and e.get("stage") != "ray"]


def test_a_remote_run_gives_the_local_outputs(cli, cluster, tiny_scene, tmp_path):
    """train, render and extract with --ray write the same files as locally (bit for bit at one thread),
    with the same events, whose paths name this computer's folders."""
    one = {"OMP_NUM_THREADS": "1"}
    local, remote = tmp_path / "local", tmp_path / "remote run"
    common = ("--iterations", 40, "--device", "cpu", "--eval")
    code, local_events, err = cli.run("train", tiny_scene, local, *common, env=one)
    assert code == 0, err
    code, events, err = cli.run("train", tiny_scene, remote, *common, "--ray", cluster, "--ray-cpus", 1)
    assert code == 0, err
    assert _shape(events) == _shape(local_events)
    for name in ("gaussians.ply", "mesh.ply", "mesh_stats.json"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    paths = [e["path"] for e in events if e["event"] == "artifact"]
    assert paths and all(Path(p).is_file() and Path(p).resolve().is_relative_to(remote.resolve()) for p in paths)
    cams = json.loads((remote / "cameras.json").read_text())["cameras"]
    assert all(Path(c["image_path"]).is_file() for c in cams)
    assert "milo-job-" not in (remote / "log.jsonl").read_text()

    code, events, err = cli.run("render", remote, "--cameras", remote / "cameras.json", "--out", tmp_path / "frames",
                             "--device", "cpu", "--ray", cluster)
    assert code == 0, err
    code, _, err = cli.run("render", local, "--cameras", local / "cameras.json", "--out", tmp_path / "frames local",
                        "--device", "cpu", env=one)
    assert code == 0, err
    frames = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert len(frames) == len(cams) and frames == sorted(p.name for p in (tmp_path / "frames local").iterdir())

    code, events, err = cli.run("extract", remote, "--iterations", 2, "--device", "cpu", "--ray", cluster,
                                "--ray-cpus", 1)
    assert code == 0, err
    done = [e for e in events if e["event"] == "done"][0]["outputs"]
    assert Path(done["mesh"]).resolve() == (remote / "mesh.ply").resolve() and (remote / "mesh.ply").is_file()


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "milo_backend", *map(str, args), "--json"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _read_until(proc, events: list[dict], predicate) -> dict:
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if predicate(event):
            return event
    raise AssertionError(f"the run ended first: {events[-5:]}")


def _interrupted(cli, args, act, timeout=900) -> tuple[int, list[dict], str]:
    """Run the CLI; `act(proc, events)` reads events until its moment and does its deed; then to the end."""
    proc = _start(*args)
    events: list[dict] = []
    try:
        act(proc, events)
        rest, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, events + cli.parse(rest), err


def test_a_killed_worker_is_replaced_and_continues_from_the_checkpoint(cli, cluster, tiny_scene, tmp_path):
    out = tmp_path / "run"
    killed = []

    def kill_the_worker(proc, events):
        worker = _read_until(proc, events, lambda e: "worker_pid" in e)["worker_pid"]
        _read_until(proc, events, lambda e: e["event"] == "progress" and e["stage"] == "train"
                    and (out / "checkpoints" / "latest.pt").is_file())
        killed.append(events[-1]["step"])
        os.kill(worker, signal.SIGKILL)
    args = ("train", tiny_scene, out, "--iterations", 600, "--device", "cpu", "--no-mesh", "--ray", cluster)
    code, events, err = _interrupted(cli, args, kill_the_worker)
    assert code == 0, err
    after = events[events.index(next(e for e in events if e["event"] == "warning" and "died" in e["message"])):]
    assert "from the last checkpoint" in after[0]["message"]
    steps = [e["step"] for e in after if e["event"] == "progress" and e["stage"] == "train"]
    assert steps and 0 < steps[0] <= killed[0] + 60 and steps[-1] == 600  # continued, not started over
    assert (out / "gaussians.ply").is_file() and after[-1]["event"] == "done"


def test_cancel_stops_the_remote_job_after_a_checkpoint_and_resume_continues(cli, cluster, tiny_scene, tmp_path):
    out = tmp_path / "run"
    args = ("train", tiny_scene, out, "--iterations", 600, "--device", "cpu", "--no-mesh", "--ray", cluster)

    def cancel(proc, events):
        _read_until(proc, events, lambda e: e["event"] == "progress" and e["stage"] == "train" and e["step"] >= 20)
        proc.send_signal(signal.SIGTERM)
    code, events, err = _interrupted(cli, args, cancel)
    assert code == 130, err
    cancelled = [e for e in events if e["event"] == "cancelled"]
    assert cancelled and Path(cancelled[0]["checkpoint"]).is_file()
    assert Path(cancelled[0]["checkpoint"]).resolve().is_relative_to(out.resolve())
    stopped = max(e["step"] for e in events if e["event"] == "progress" and e["stage"] == "train")
    code, events, err = cli.run(*args, "--resume")
    assert code == 0, err
    steps = [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert steps[0] >= stopped and steps[-1] == 600


def test_a_batch_finishes_the_good_scene_and_reports_the_broken_one(cli, tiny_scene, tmp_path):
    """Without --ray the batch starts its own Ray instance on this computer (loopback only)."""
    broken = tmp_path / "broken scene"
    broken.mkdir()
    (broken / "notes.txt").write_text("no photos here")
    out = tmp_path / "batch"
    # a new local Ray instance writes an authentication token into ~/.ray: a home of the test's own (the
    # compiled CPU kernels stay in the user's cache, built once)
    from milo_backend.cpu_kernels import kernel_cache
    code, events, err = cli.run("batch", tiny_scene, broken, "--out", out, "--iterations", 30, "--device", "cpu",
                             "--eval", env={"HOME": str(tmp_path / "home"), "MILO_KERNEL_CACHE": str(kernel_cache())})
    assert code == 2, err
    summary = json.loads((out / "batch_summary.json").read_text())
    rows = {r["scene"]: r for r in summary["scenes"]}
    good, bad = rows[tiny_scene.name], rows["broken scene"]
    assert good["status"] == "done" and good["psnr"] > 10 and good["gaussians"] > 0 and good["mesh_vertices"] > 0
    assert bad["status"] == "failed" and bad["message"]
    assert (out / tiny_scene.name / "gaussians.ply").is_file()
    table = (out / "batch_summary.md").read_text()
    assert "| broken scene | failed |" in table and f"| {tiny_scene.name} | done |" in table
    error = [e for e in events if e["event"] == "error"][-1]
    assert "broken scene" in error["message"]
    scenes = {e["scene"] for e in events if e["event"] == "scene"}
    assert scenes == {tiny_scene.name, "broken scene"}
    assert [e for e in events if e["event"] == "progress" and e["stage"] == "batch"][-1]["step"] == 1000
    assert "a local Ray instance" in events[0]["message"]


def test_an_unreachable_address_is_named_at_once(cli, tmp_path, tiny_scene):
    address = f"ray://127.0.0.1:{free_port()}"  # nothing listens there
    code, events, _ = cli.run("train", tiny_scene, tmp_path / "out", "--ray", address, timeout=120)
    assert code == 2
    assert address in events[-1]["message"] and "ray start --head" in events[-1]["hint"]
    # a port that accepts connections but is no Ray Client server (Ray itself would retry for ~35 s)
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"ray://127.0.0.1:{silent.getsockname()[1]}"
        code, events, _ = cli.run("train", tiny_scene, tmp_path / "out", "--ray", address, timeout=120)
    assert code == 2 and f"cannot reach the Ray cluster at {address}" in events[-1]["message"]


def test_a_cluster_without_the_backend_or_with_another_version_is_named(cluster):
    connect(cluster)
    try:
        with pytest.raises(MiloError, match="has no milo-backend") as exc:
            check_cluster(ray, cluster, module="milo_backend_not_installed")
        assert "--ray-runtime-env" in exc.value.hint and "pip install" in exc.value.hint
        with pytest.raises(MiloError, match="version mismatch: milo-backend 0.0.1 on this computer"):
            check_cluster(ray, cluster, version="0.0.1")
        assert check_cluster(ray, cluster).nodes[0]["CPU"] == 2
    finally:
        ray.shutdown()
