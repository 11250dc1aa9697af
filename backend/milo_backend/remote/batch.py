"""`milo-backend batch SCENES... --out DIR [--ray ADDRESS]`: one reconstruction per photo folder or
dataset, each a remote job (`client.RemoteRun`) that Ray places on the cluster's GPUs and CPUs, or on a
local Ray instance over this computer's cores without `--ray`.

A scene that fails does not stop the others; a scene whose worker dies continues on a new worker from its
last checkpoint. The result is `DIR/batch_summary.json` and `.md`: per scene its status, time, held-out
PSNR (with --eval), Gaussians and mesh size.
"""
from __future__ import annotations

import argparse
import copy
import json
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from milo_backend.atomic import atomic_path, write_json
from milo_backend.errors import MiloError
from milo_backend.events import EtaEstimator
from milo_backend.remote.client import (JobSpec, RemoteRun, StopSignals, check_cluster, connect, job_spec,
                                        runtime_env)
from milo_backend.remote.worker import ROOT_TOKEN
from milo_backend.run_folder import RunFolder, locked_run_folder

SUMMARY_JSON = "batch_summary.json"
SUMMARY_MD = "batch_summary.md"
TRAIN_SHARE = 0.9  # of a scene's progress bar: training; the rest is the final mesh and eval
TICK_S = 0.5


@dataclass
class SceneState:
    """What the batch knows of one scene, updated from its job's events (in the job's thread)."""

    name: str
    data: Path
    out: Path
    status: str = "queued"   # queued, running, done, failed, cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""
    started: float | None = None
    seconds: float | None = None
    job: RemoteRun | None = None
    thread: threading.Thread | None = field(default=None, repr=False)
    trained: bool = False

    def on_event(self, obj: dict) -> None:
        kind = obj.get("event")
        if kind == "log" and "worker_pid" in obj:
            self.status = "running"
            self.started = self.started or time.monotonic()
        elif kind == "stage":
            self.stage, self.step, self.total, self.eta_s = obj.get("stage", ""), 0, 0, None
        elif kind == "progress":
            self.stage = obj.get("stage", self.stage)
            self.step, self.total, self.eta_s = obj.get("step", 0), obj.get("total", 0), obj.get("eta_s")
        elif kind == "artifact" and obj.get("kind") == "gaussians":
            self.trained = True
        elif kind in ("error", "warning"):
            self.message = obj.get("message", "")

    def fraction(self) -> float:
        if self.status in ("done", "failed", "cancelled"):
            return 1.0
        if self.trained:
            return TRAIN_SHARE + (1 - TRAIN_SHARE) * (self.step / self.total if self.total else 0.0)
        if self.stage == "train" and self.total:
            return TRAIN_SHARE * self.step / self.total
        return 0.0


def scene_names(scenes: list[Path]) -> list[str]:
    """One output folder name per scene: the folder's name, numbered where two are alike."""
    names: list[str] = []
    for scene in scenes:
        base = Path(scene).resolve().name or "scene"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _ply_vertex_count(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                line = raw.decode("ascii", errors="replace").strip()
                if line.startswith("element vertex"):
                    return int(line.split()[-1])
                if line == "end_header":
                    return None
    except (OSError, ValueError):
        return None
    return None


def summary_row(state: SceneState) -> dict:
    run = RunFolder(state.out)

    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    ev, mesh = read(run.eval), read(run.mesh_stats)
    return {"scene": state.name, "data": str(state.data), "out": str(state.out), "status": state.status,
            "seconds": round(state.seconds, 1) if state.seconds is not None else None,
            "psnr": ev.get("psnr"), "ssim": ev.get("ssim"),
            "gaussians": _ply_vertex_count(run.gaussians) if run.gaussians.is_file() else None,
            "mesh_vertices": mesh.get("vertices"), "mesh_faces": mesh.get("faces"),
            "attempts": state.job.attempts if state.job else 0, "message": state.message}


def summary_markdown(rows: list[dict], header: str) -> str:
    def cell(v, fmt="{}"):
        return "-" if v is None or v == "" else fmt.format(v)
    lines = [header, "", "| scene | status | time (s) | held-out PSNR | Gaussians | mesh vertices | mesh faces | "
             "attempts | message |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['status']} | {cell(r['seconds'], '{:.0f}')} | {cell(r['psnr'], '{:.2f}')} | "
                     f"{cell(r['gaussians'])} | {cell(r['mesh_vertices'])} | {cell(r['mesh_faces'])} | "
                     f"{r['attempts']} | {cell(r['message']).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


class BatchDisplay:
    """One overall line plus one line per scene: tqdm bars on a console, events with --json."""

    def __init__(self, states: list[SceneState], reporter):
        self.states, self.reporter = states, reporter
        self.eta = EtaEstimator()
        self.bars = None
        self.last: dict[str, tuple] = {}
        self.last_sent: dict[str, float] = {}
        if not reporter.json_mode and not reporter.quiet:
            from tqdm import tqdm

            fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]"
            self.bars = [tqdm(total=1000, desc="batch", position=0, file=reporter.stream, bar_format=fmt,
                              dynamic_ncols=True)]
            width = max(len(s.name) for s in states)
            self.bars += [tqdm(total=1000, desc=s.name.ljust(width), position=i + 1, file=reporter.stream,
                               bar_format=fmt, dynamic_ncols=True) for i, s in enumerate(states)]

    def update(self, final: bool = False) -> None:
        fraction = sum(s.fraction() for s in self.states) / len(self.states)
        finished = sum(s.status in ("done", "failed", "cancelled") for s in self.states)
        eta = self.eta.update(int(1000 * fraction), 1000)
        now = time.monotonic()
        if self.bars is not None:
            self._draw(self.bars[0], fraction, f"{finished}/{len(self.states)} scenes finished", eta)
            for bar, s in zip(self.bars[1:], self.states):
                text = s.status if s.status != "running" else f"{s.stage} {s.step}/{s.total}" if s.total else s.stage
                self._draw(bar, s.fraction(), text, s.eta_s if s.status == "running" else None)
            return
        self.reporter.emit("progress", stage="batch", step=int(1000 * fraction), total=1000, eta_s=eta,
                           finished=finished, scenes=len(self.states))
        for s in self.states:
            key = (s.status, s.stage, s.step)
            changed = self.last.get(s.name) != key
            status_changed = self.last.get(s.name, (None,))[0] != s.status
            if changed and (final or status_changed or now - self.last_sent.get(s.name, 0) >= 1.0):
                self.reporter.emit("scene", scene=s.name, status=s.status, stage=s.stage, step=s.step,
                                   total=s.total, eta_s=s.eta_s, message=s.message)
                self.last[s.name], self.last_sent[s.name] = key, now

    @staticmethod
    def _draw(bar, fraction: float, text: str, eta: float | None) -> None:
        from tqdm import tqdm

        bar.n = int(1000 * fraction)
        bar.set_postfix_str(f"{text}" + (f", ETA {tqdm.format_interval(eta)}" if eta is not None else ""),
                            refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars or ():
            bar.close()


def _scene_job(state: SceneState) -> None:
    """The thread of one scene: its run folder's lock, the job, and its outcome."""
    try:
        with locked_run_folder(state.out):
            code = state.job.run()
    except MiloError as exc:
        code, state.message = 2, exc.message + (f" ({exc.hint})" if exc.hint else "")
    except Exception as exc:  # noqa: BLE001 - one scene's bug must not end the batch; the trace goes to its log
        code, state.message = 1, f"internal error: {type(exc).__name__}: {exc}"
        try:
            with open(RunFolder(state.out).path / "batch_error.txt", "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
        except OSError:
            pass
    state.seconds = time.monotonic() - state.started if state.started else 0.0
    state.status = {0: "done", 130: "cancelled"}.get(code, "failed")


def run_batch(args: argparse.Namespace, train_parser: argparse.ArgumentParser, reporter) -> int:
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    where = f"the Ray cluster at {args.ray}" if args.ray else "a local Ray instance on this computer"
    reporter.stage("batch", f"{len(args.scenes)} scene(s) on {where}")
    ray = connect(args.ray, runtime_env(args.ray_runtime_env))
    try:
        cluster = check_cluster(ray, args.ray or "this computer")
        gpu = args.device in ("auto", "cuda") and cluster.has_gpu
        # on CPUs, several scenes side by side at one core each keep every core busy; a GPU takes one scene
        resources = cluster.job_resources(args.device, args.ray_cpus, default_cpus=None if gpu else 1)
        reporter.log(f"each scene asks for {resources[0]} CPU(s) and {resources[1]} GPU(s); cluster: "
                     f"{len(cluster.nodes)} node(s)")
        states = []
        for scene, name in zip(args.scenes, scene_names(args.scenes)):
            state = SceneState(name, scene, out_dir / name)
            states.append(state)
            ns = copy.copy(args)
            ns.command, ns.data, ns.out = "train", scene, state.out
            ns.resume = args.resume and RunFolder(state.out).holds_run  # --resume: continue those that started
            try:
                spec: JobSpec = job_spec(train_parser, ns)
            except MiloError as exc:
                state.status, state.message = "failed", exc.message
                continue
            if args.eval:
                spec.commands.append(["eval", f"{ROOT_TOKEN}/out"])
            spec.name = f"scene {name}"
            state.job = RemoteRun(ray, spec, resources, state.on_event, retries=args.retries)
        started = time.monotonic()
        display = BatchDisplay(states, reporter)
        for state in states:
            if state.job is not None:
                state.thread = threading.Thread(target=_scene_job, args=(state,), daemon=True)
                state.thread.start()

        def stop(force: bool) -> None:
            for s in states:
                if s.job is not None:
                    s.job.cancel(force)
        with StopSignals(stop):
            while any(s.thread is not None and s.thread.is_alive() for s in states):
                display.update()
                time.sleep(TICK_S)
        display.update(final=True)
        display.close()
    finally:
        ray.shutdown()
    rows = [summary_row(s) for s in states]
    total = time.monotonic() - started
    summary = {"where": where, "cpus_per_scene": resources[0], "gpus_per_scene": resources[1],
               "seconds": round(total, 1), "scenes": rows}
    write_json(out_dir / SUMMARY_JSON, summary)
    with atomic_path(out_dir / SUMMARY_MD) as tmp:
        tmp.write_text(summary_markdown(rows, f"# Batch: {len(rows)} scene(s) on {where}, {total:.0f} s"),
                       encoding="utf-8")
    reporter.artifact("batch_summary", out_dir / SUMMARY_JSON)
    reporter.artifact("batch_summary_md", out_dir / SUMMARY_MD)
    counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "failed", "cancelled")}
    if counts["cancelled"]:
        reporter.emit("cancelled", message=f"stopped on request: {counts['cancelled']} scene(s) saved a checkpoint",
                      checkpoint=None, hint="run the same batch with --resume to continue them")
        return 130
    if counts["failed"]:
        failed = ", ".join(r["scene"] for r in rows if r["status"] == "failed")
        reporter.error(f"{counts['failed']} of {len(rows)} scene(s) failed: {failed}",
                       hint=f"their messages are in {out_dir / SUMMARY_MD}; the others finished", path=str(out_dir))
        return 2
    reporter.done(summary=str((out_dir / SUMMARY_JSON).resolve()), markdown=str((out_dir / SUMMARY_MD).resolve()),
                  **counts)
    return 0
