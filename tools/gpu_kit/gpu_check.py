"""`bash run.sh gpu-check [--dry-run]`: prove the GPU path in one short call on a machine without internet.

In order, under one hard wall-clock cap (default 540 s), each step with its own share of what is left:
1. install the kit's wheels offline (`.gpu_kit/wheels`, built by `bash run.sh gpu-kit`) into a folder that
   this Python (and its torch) loads first, and import everything from there;
2. `milo-backend setup-gpu`: load or build gsplat's and nvdiffrast's CUDA kernels (timed);
3. the CUDA tests: gsplat against the torch renderer, nvdiffrast against the torch mesh rasteriser,
   gradients both ways through a mesh-in-the-loop step (and the CPU parity tests beside them);
4. `bench render` and `bench mesh` with `--device cuda`;
5. the fox from its posed photos at half resolution, preset lowres, stopped at the cap with a checkpoint;
   iterations per second per phase, peak GPU memory, and the extrapolated time to `mesh.ply`.
Results go to OUT (default `$OUT`, else `gpu_check_out/`): `gpu_check.json` (rewritten after every
step, so a check stopped from outside still returns what it measured), `gpu_check.log`, `pytest.xml`,
`BENCHMARKS_gpu.md`, `fox_events.jsonl`.

`--dry-run` (and any machine without CUDA) runs what needs no GPU: the offline install into a fresh
folder, the imports, `setup-gpu`'s answer, the CPU parity tests, and the fox step's plumbing on the CPU
at a tiny size. Standard library only: it must start before anything is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".gpu_kit"
IMPORTS = ["milo_backend", "gsplat", "nvdiffrast.torch", "shull", "plyfile", "pytorch_msssim", "pycolmap"]
TESTS = ["tests/backend/test_render_gsplat.py", "tests/backend/test_mesh_raster.py",
         "tests/backend/test_gaussians_cuda.py", "tests/backend/test_render_torch.py",
         "tests/backend/test_render_parts.py", "tests/backend/test_gpu_kernels.py",
         "tests/backend/test_meshloop_phase.py"]
# share of the time left that each step may take (the fox takes what remains)
SHARES = {"install": 0.2, "kernels": 0.75, "tests": 0.5, "bench": 0.5}
FOX_MARGIN_S = 45.0       # after SIGTERM the backend checkpoints and exits; leave it that long (at most
                          # a quarter of the cap, for short dry runs)


class Check:
    """The results of one run: steps in order, saved after each, and a log."""

    def __init__(self, out: Path, cap_s: float, dry_run: bool):
        self.out, self.cap_s, self.dry_run = out, cap_s, dry_run
        self.start = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "gpu_check.log", "a", encoding="utf-8")
        self.results = {"dry_run": dry_run, "cap_s": cap_s, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "python": sys.version.split()[0], "steps": {}, "stopped_at_cap": False}

    def fox_margin(self) -> float:
        return min(FOX_MARGIN_S, 0.25 * self.cap_s)

    def left(self) -> float:
        return self.cap_s - (time.monotonic() - self.start)

    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:7.1f}s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def record(self, step: str, **fields) -> dict:
        entry = self.results["steps"].setdefault(step, {})
        entry.update(fields)
        self.save()
        return entry

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2))
        os.replace(tmp, self.out / "gpu_check.json")

    def run(self, step: str, argv: list[str], limit_s: float, env: dict | None = None,
            on_line=None) -> tuple[int | None, str]:
        """Run argv (an argument list, never a shell string) for at most limit_s seconds; its output goes
        to the log. Returns (exit code or None when stopped at the limit, output)."""
        self.log(f"{step}: {' '.join(argv)} (at most {limit_s:.0f} s)")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=ROOT, start_new_session=True)
        lines: list[str] = []

        def pump():
            for line in proc.stdout:
                lines.append(line)
                self.log_file.write(line)
                if on_line:
                    on_line(line)
            self.log_file.flush()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            self.log(f"{step}: stopped at its time limit")
            stop(proc, grace_s=self.fox_margin() if step == "fox" else 10.0)
            code = None
        reader.join(timeout=5)
        return code, "".join(lines)


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (the backend saves a checkpoint and exits 130), then SIGKILL after grace_s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def cuda_present(python: str) -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


# -- steps --------------------------------------------------------------------------------------------
def step_install(check: Check, kit: Path, site: Path) -> dict | None:
    wheels = sorted((kit / "wheels").glob("*.whl"))
    if not wheels:
        check.record("install", status="failed", error=f"no wheels in {kit / 'wheels'}",
                     hint="build the kit first, on a machine with internet: bash run.sh gpu-kit")
        return None
    t0, installed, skipped = time.monotonic(), [], []
    limit = check.left() * SHARES["install"]
    for wheel in wheels:
        code, out = check.run("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                          "--no-compile", "--disable-pip-version-check", "--upgrade",
                                          "--target", str(site), str(wheel)],
                              limit - (time.monotonic() - t0))
        if code == 0:
            installed.append(wheel.name)
        elif "is not a supported wheel" in out:  # built for the GPU machine's Python: the dry run skips it
            skipped.append(wheel.name)
        else:
            check.record("install", status="failed", error=f"{wheel.name}: {out.strip()[-400:]}")
            return None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               MILO_OFFLINE="1", PYTHONUNBUFFERED="1")
    probe = ("import importlib, json, sys\nres = {}\nfor n in sys.argv[1:]:\n"
             "    try:\n        m = importlib.import_module(n); res[n] = getattr(m, '__file__', '?')\n"
             "    except Exception as e:\n        res[n] = 'FAILED: %s: %s' % (type(e).__name__, e)\nprint(json.dumps(res))")
    code, out = check.run("install", [sys.executable, "-c", probe, *IMPORTS], 120, env=env)
    imports = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"probe": out[-400:]}
    failed = {k: v for k, v in imports.items() if str(v).startswith("FAILED")}
    from_kit = str(imports.get("milo_backend", "")).startswith(str(site))
    status = "ok" if not failed and from_kit else "failed"
    check.record("install", status=status, seconds=round(time.monotonic() - t0, 1), installed=installed,
                 skipped_other_python=skipped, imports=imports, backend_from_kit=from_kit)
    return env if status == "ok" or check.dry_run and from_kit else None


def step_kernels(check: Check, env: dict, cuda: bool) -> None:
    env = dict(env)
    if cuda:
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
        cap = subprocess.run([sys.executable, "-c", "import torch; print('%d.%d' % torch.cuda.get_device_capability())"],
                             capture_output=True, text=True, env=env).stdout.strip()
        if cap:
            env.setdefault("TORCH_CUDA_ARCH_LIST", cap)  # build for this GPU only: minutes less
    t0 = time.monotonic()
    code, out = check.run("kernels", [sys.executable, "-m", "milo_backend", "setup-gpu", "--json"],
                          check.left() * SHARES["kernels"], env=env)
    events = parse_events(out)
    done = next((e for e in reversed(events) if e.get("event") == "done"), None)
    check.record("kernels", status="ok" if code == 0 and done else ("stopped" if code is None else "failed"),
                 seconds=round(time.monotonic() - t0, 1), arch=env.get("TORCH_CUDA_ARCH_LIST"),
                 plans=(done or {}).get("outputs", {}).get("kernels"),
                 messages=[e.get("message") for e in events if e.get("event") in ("log", "warning")][-12:])


def step_tests(check: Check, env: dict) -> None:
    t0 = time.monotonic()
    xml = check.out / "pytest.xml"
    code, out = check.run("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={xml}", *TESTS], check.left() * SHARES["tests"], env=env)
    counts = junit_counts(xml) if xml.is_file() else {}
    failures = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    check.record("tests", status="ok" if code == 0 else ("stopped" if code is None else "failed"),
                 seconds=round(time.monotonic() - t0, 1), **counts, failed_tests=failures[:20],
                 summary=(out.strip().splitlines() or [""])[-1])


def junit_counts(xml: Path) -> dict:
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    # on a GPU machine this is 0: every test that needs CUDA ran
    no_cuda = sum(1 for s in suites for case in s.iter("testcase") for skip in case.iter("skipped")
                  if "cuda" in (skip.get("message") or "").lower())
    return {**total, "skipped_needing_cuda": no_cuda}


def step_bench(check: Check, env: dict) -> None:
    t0 = time.monotonic()
    md = check.out / "BENCHMARKS_gpu.md"
    code, out = check.run("bench", [sys.executable, "-m", "milo_backend", "bench", "render", "mesh", "--device",
                                    "cuda", "--out", str(md)], check.left() * SHARES["bench"], env=env)
    check.record("bench", status="ok" if code == 0 else ("stopped" if code is None else "failed"),
                 seconds=round(time.monotonic() - t0, 1), file=md.name if md.is_file() else None,
                 tail=out.strip().splitlines()[-5:])


class GpuMemory:
    """Peak GPU memory in use on the device while a step runs (nvidia-smi every second)."""

    def __init__(self):
        self.peak_mib, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._done.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max([self.peak_mib] + [int(v) for v in out.split() if v.isdigit()])
            except (OSError, subprocess.SubprocessError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()


def step_fox(check: Check, env: dict, kit: Path, cuda: bool, work: Path, iterations: int | None) -> None:
    fox = kit / "fox_half"
    if not (fox / "transforms.json").is_file():
        check.record("fox", status="failed", error=f"no fox in the kit ({fox})",
                     hint="bash run.sh gpu-kit copies it from ../shared/data/fox")
        return
    run = work / "fox run"  # a space in the path, as users have
    argv = [sys.executable, "-m", "milo_backend", "train", str(fox), str(run), "--json", "--eval"]
    argv += (["--device", "cuda", "--preset", "lowres"] if cuda else
             ["--device", "cpu", "--max-size", "64", "--no-extract"])
    argv += ["--iterations", str(iterations or (None if cuda else 40))] if iterations or not cuda else []
    stages: dict[str, float] = {}
    progress: list[tuple[float, int, int]] = []

    def on_line(line: str):
        try:
            event = json.loads(line)
        except ValueError:
            return
        now = time.monotonic()
        if event.get("event") == "stage":
            stages.setdefault(event.get("stage", "?"), round(now - t0, 1))
        elif event.get("event") == "progress" and event.get("stage") == "train":
            progress.append((now - t0, int(event["step"]), int(event["total"])))
    t0 = time.monotonic()
    with GpuMemory() as memory:
        code, out = check.run("fox", argv, check.left() - check.fox_margin(), env=env, on_line=on_line)
    (check.out / "fox_events.jsonl").write_text("".join(out.splitlines(keepends=True)[-400:]))
    seconds = time.monotonic() - t0
    fields = {"status": "ok" if code == 0 else ("stopped at the cap" if code is None or code == 130 else "failed"),
              "exit_code": code, "seconds": round(seconds, 1), "stage_started_s": stages,
              "peak_gpu_mib": memory.peak_mib if cuda else None, "mesh_ply": (run / "mesh.ply").is_file()}
    if progress:
        fields.update(extrapolate(progress, stages))
    check.record("fox", **fields)


def extrapolate(progress: list[tuple[float, int, int]], stages: dict[str, float]) -> dict:
    """Iterations per second over the last stretch and the whole run so far, and the time the training
    would take at the recent rate (a lower bound while the mesh phase, the slower one, has not started)."""
    t_first, it_first, total = progress[0]
    t_last, it_last, _ = progress[-1]
    recent = [p for p in progress if p[0] >= t_last - 30.0]
    if len(recent) < 2:
        recent = progress[-2:]
    rate = (it_last - it_first) / max(t_last - t_first, 1e-6)
    recent_rate = ((recent[-1][1] - recent[0][1]) / max(recent[-1][0] - recent[0][0], 1e-6)
                   if len(recent) > 1 else rate)
    return {"iterations_done": it_last, "iterations_total": total, "iterations_per_s": round(rate, 2),
            "recent_iterations_per_s": round(recent_rate, 2),
            "training_s_extrapolated": round(t_first + (total - it_first) / max(recent_rate, 1e-6), 0)}


def parse_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Install, build, test and measure the GPU path offline.")
    ap.add_argument("--dry-run", action="store_true", help="only the steps that need no GPU (automatic without CUDA)")
    ap.add_argument("--cap", type=float, default=540.0, help="hard wall-clock cap in seconds (default 540)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_check_out"))
    ap.add_argument("--kit", type=Path, default=KIT)
    ap.add_argument("--fox-iterations", type=int, default=None,
                    help="the fox's training length (default: the backend's, extrapolated when the cap stops it)")
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: tests,bench,fox")
    args = ap.parse_args(argv)
    if args.cap <= 0:
        ap.error(f"--cap {args.cap}: give a number of seconds above 0")
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"tests", "bench", "fox"}
    if unknown:
        ap.error(f"--skip {','.join(sorted(unknown))}: choose from tests, bench, fox")
    cuda = cuda_present(sys.executable)
    dry = args.dry_run or not cuda
    check = Check(args.out, args.cap, dry)
    check.results["cuda"] = cuda
    check.log(f"gpu-check {'dry run' if dry else 'on CUDA'}: python {sys.version.split()[0]}, cap {args.cap:.0f} s, "
              f"results in {args.out}")
    with tempfile.TemporaryDirectory(prefix="milo gpu check ") as work:
        env = step_install(check, args.kit, Path(work) / "site")
        if env is not None:
            if not cuda:
                env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run on a GPU machine stays on the CPU too
            step_kernels(check, env, cuda and not dry)
            for name, fn in (("tests", lambda: step_tests(check, env)),
                             ("bench", lambda: step_bench(check, env) if not dry else
                              check.record("bench", status="skipped", why="needs CUDA")),
                             ("fox", lambda: step_fox(check, env, args.kit, cuda and not dry, Path(work),
                                                       args.fox_iterations))):
                if name in skip:
                    check.record(name, status="skipped", why="--skip")
                elif check.left() < 5:
                    check.results["stopped_at_cap"] = True
                    check.record(name, status="not run: the cap was reached")
                else:
                    fn()
    check.results["stopped_at_cap"] = check.results["stopped_at_cap"] or any(
        str(s.get("status", "")).startswith("stopped") for s in check.results["steps"].values())
    failed = [n for n, s in check.results["steps"].items() if s.get("status") == "failed"]
    check.results["ok"] = not failed
    check.save()
    check.log(f"done in {time.monotonic() - check.start:.0f} s: "
              + ("no step failed" if not failed else f"failed: {', '.join(failed)}")
              + (" (stopped at the cap: see each step's status)" if check.results["stopped_at_cap"] else "")
              + f"; see {args.out / 'gpu_check.json'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
