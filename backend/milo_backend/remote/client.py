"""This computer's side of a remote job on a Ray cluster: connect, check the cluster, send the inputs, run
the same command line there, stream its events here and mirror its output folder into OUT.

A run on Ray behaves as the local one does: the same JSON events (paths in them name OUT here), the same
exit codes, Ctrl-C or SIGTERM stops it after a checkpoint (which is mirrored here, so `--resume` continues
it, locally or on the cluster), and a worker that dies is replaced by a new one that continues from the
last checkpoint that reached this computer. Ray is imported only here, only when `--ray` is given.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from milo_backend import __version__
from milo_backend.errors import MiloError
from milo_backend.remote.transfer import FolderMirror, PathMap, Upload, is_inside, pack
from milo_backend.remote.worker import ROOT_TOKEN, BackendJob
from milo_backend.run_folder import RunFolder

RAY_HINT = "install Ray on this computer: pip install 'milo-backend[ray]' (the same Ray version as the cluster)"
CONNECT_TIMEOUT_S = 5.0   # an address that does not answer in this time is reported, not waited on
POLL_S = 0.25
UPLOADS_IN_FLIGHT = 2     # chunks of the inputs held by the object store at a time
RETRIES = 2               # new workers after a worker died, each from the last checkpoint
CONNECT_ATTEMPTS = 3      # Ray Client's head sometimes fails to start its per-client server ("Initialization
                          # failure from server": a race in Ray's proxier, seen twice here); the next try works


# -- connecting ------------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of `ray://host:port` or `host:port`; None for `auto` (the cluster this node is in)."""
    if address == "auto":
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MiloError(f"not a Ray cluster address: {address!r}",
                        hint="give ray://HOST:PORT (Ray Client, port 10001 by default), HOST:PORT on a node of "
                             "the cluster (port 6379 by default), or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    target = parse_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, (socket.timeout, TimeoutError)) else (exc.strerror or str(exc))
        raise MiloError(f"cannot reach the Ray cluster at {address} ({reason})",
                        hint="check the address and port; start a cluster there with `ray start --head` "
                             "(Ray Client listens on port 10001: ray://HOST:10001)") from None
    if address.startswith("ray://"):
        _ping_ray_client(address, *target, timeout=timeout)


def _ping_ray_client(address: str, host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Ask the Ray Client server at `address` for a ping: an open port is not yet a cluster (a proxy or
    another service answers too, and Ray Client would then retry for half a minute)."""
    try:
        import grpc
        import ray.core.generated.ray_client_pb2 as pb
        import ray.core.generated.ray_client_pb2_grpc as pb_grpc
    except ImportError:  # a Ray without these modules: ray.init will tell
        return
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        pb_grpc.RayletDriverStub(channel).ClusterInfo(pb.ClusterInfoRequest(type=pb.ClusterInfoType.PING),
                                                      timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:  # a Ray head that wants its token: connect() sends it
            return
        reason = "no answer" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
            else f"something answers there, but not a Ray Client server: {exc.details()}"
        raise MiloError(f"cannot reach the Ray cluster at {address} ({reason})",
                        hint="check the address and port: Ray Client listens on the head's port 10001 unless "
                             "`ray start --head --ray-client-server-port` chose another") from None
    finally:
        channel.close()


def import_ray():
    try:
        import ray
    except ImportError:
        raise MiloError("Ray is not installed on this computer", hint=RAY_HINT) from None
    return ray


def connect(address: str | None, runtime_env: dict | None = None, num_cpus: int | None = None):
    """The `ray` module, initialised: on the cluster at `address`, or on a new local one (None)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    common = dict(namespace="milo", runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False)
    if address is None:
        # loopback only: a batch on this computer opens no port on the network
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        return ray
    check_reachable(address)
    _send_token_if_any()
    error: Exception | None = None
    for _ in range(CONNECT_ATTEMPTS):
        try:
            ray.init(address=address, **common)
            return ray
        except Exception as exc:  # noqa: BLE001 - Ray raises several types; each becomes one readable error
            error = exc
            if "version" in str(exc).lower() or "authenticat" in str(exc).lower():
                break
            ray.shutdown()
            time.sleep(2.0)
    text = " ".join(str(error).split())[:600] or type(error).__name__
    if "authenticat" in text.lower():
        raise MiloError(f"the Ray cluster at {address} refused this computer: {text}",
                        hint="the cluster uses token authentication: copy the head's ~/.ray/auth_token to this "
                             "computer's ~/.ray/auth_token (or set RAY_AUTH_TOKEN to it)")
    if "version" in text.lower():
        import platform

        raise MiloError(f"version mismatch between this computer (Ray {ray.__version__}, Python "
                        f"{platform.python_version()}) and the Ray cluster at {address}: {text}",
                        hint="install the cluster's Ray and Python versions here (pip install ray==VERSION)")
    raise MiloError(f"could not connect to the Ray cluster at {address}: {text}",
                    hint="check that the address is the cluster's head (ray status on it prints it)")


def _send_token_if_any() -> None:
    """Ray (2.52 on) heads require a token once one exists (~/.ray/auth_token, RAY_AUTH_TOKEN), and Ray Client
    sends it only when this process is in token mode: the rule `ray start` itself applies (a head started
    after a local `ray.init()` had written a token refused every connection without it)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # an older Ray: no authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _make_probe():
    """A function that Ray sends by value: it runs on a worker without milo-backend and says so."""
    def probe(module: str) -> dict:
        import importlib
        import platform

        try:
            version, error = getattr(importlib.import_module(module), "__version__", "unknown"), None
        except Exception as exc:  # noqa: BLE001
            version, error = None, f"{type(exc).__name__}: {exc}"
        return {"version": version, "error": error, "host": platform.node()}
    return probe


@dataclass(frozen=True)
class Cluster:
    address: str
    nodes: tuple[dict, ...]   # alive nodes' resources: {"CPU": 2.0, "GPU": 1.0, ...}

    @property
    def has_gpu(self) -> bool:
        return any(n.get("GPU", 0) >= 1 for n in self.nodes)

    def job_resources(self, device: str, cpus: int | None, default_cpus: int | None = None) -> tuple[int, int]:
        """(CPUs, GPUs) one job asks Ray for. A GPU when the cluster has one and `device` allows it; CPUs:
        `cpus`, else `default_cpus`, else what one node offers (per GPU on GPU nodes)."""
        if device == "cuda" and not self.has_gpu:
            raise MiloError(f"--device cuda, but the Ray cluster at {self.address} has no GPU",
                            hint="use --device auto (GPU when there is one) or cpu, or add a GPU node")
        gpu = device in ("auto", "cuda") and self.has_gpu
        if cpus is not None and cpus < 1:
            raise MiloError(f"--ray-cpus {cpus} cannot run a job", hint="give 1 or more CPUs per job")
        if cpus is None:
            cpus = default_cpus
        if cpus is None:
            if gpu:
                cpus = min(int(n.get("CPU", 1) // max(n.get("GPU", 1), 1)) for n in self.nodes if n.get("GPU", 0) >= 1)
            else:
                cpus = int(max(n.get("CPU", 1) for n in self.nodes))
        biggest = max(n.get("CPU", 0) for n in self.nodes)
        if cpus > biggest:
            raise MiloError(f"--ray-cpus {cpus}, but no node of the Ray cluster at {self.address} has more than "
                            f"{int(biggest)} CPUs", hint=f"give --ray-cpus {int(biggest)} or fewer")
        return max(1, cpus), int(gpu)


def check_cluster(ray, address: str, module: str = "milo_backend", version: str = __version__) -> Cluster:
    """The cluster's nodes, after checking that its workers have this version of the backend."""
    probe = ray.remote(num_cpus=0)(_make_probe())
    try:
        found = ray.get(probe.remote(module), timeout=120)
    except Exception as exc:  # noqa: BLE001
        raise MiloError(f"the Ray cluster at {address} could not run a task: {exc}",
                        hint="check the cluster with `ray status` on its head") from None
    if found["version"] is None:
        raise MiloError(f"the Ray cluster at {address} has no milo-backend (on {found['host']}: {found['error']})",
                        hint=f"install it on every node (pip install 'milo-backend=={version}' in the nodes' image), "
                             f"or let Ray install it for this job: --ray-runtime-env "
                             f"'{{\"pip\": [\"milo-backend=={version}\"]}}'")
    if found["version"] != version:
        raise MiloError(f"version mismatch: milo-backend {version} on this computer, {found['version']} on the "
                        f"Ray cluster at {address} ({found['host']})",
                        hint="install the same milo-backend version on both sides")
    try:
        nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - older Ray Client: the cluster's totals stand for one node
        nodes = (dict(ray.cluster_resources()),)
    return Cluster(address, nodes or (dict(ray.cluster_resources()),))


# -- one job --------------------------------------------------------------------------------------
@dataclass
class JobSpec:
    """A command line to run on a worker, with what it reads and writes on this computer.

    `commands` name job folders as `{root}/ARC`; `folders` maps each ARC used in them to its local path;
    `uploads()` lists what to send (called per attempt: a retry sends the newest checkpoint);
    `outputs` are the ARCs mirrored back; `resumable`: a retry adds --resume once a checkpoint is here."""

    name: str
    commands: list[list[str]]
    folders: dict[str, Path]
    uploads: Callable[[], list[Upload]]
    outputs: tuple[str, ...]
    device: str = "auto"
    resumable: bool = False

    def path_map(self, root: str) -> PathMap:
        return PathMap(tuple((f"{root}/{arc}", str(Path(local).resolve())) for arc, local in self.folders.items()))

    def checkpoint(self) -> Path | None:
        return RunFolder(self.folders["out"]).checkpoint if "out" in self.folders else None


class WorkerDied(Exception):
    pass


@dataclass
class RemoteRun:
    """Runs a `JobSpec` on the cluster; `on_event` receives every event as a dict (paths local)."""

    ray: object
    spec: JobSpec
    resources: tuple[int, int]
    on_event: Callable[[dict], None]
    on_stderr: Callable[[str], None] = lambda text: None
    retries: int = RETRIES
    cancel_requested: bool = False
    force_stop: bool = False
    attempts: int = 0
    _started: bool = False  # the command runs (a cancel now goes to it, not to the queue)

    def cancel(self, force: bool = False) -> None:
        self.cancel_requested = True
        self.force_stop = self.force_stop or force

    def _event(self, event: str, **fields) -> None:
        self.on_event({"event": event, **fields})

    def run(self) -> int:
        """The job's exit code (0, 2, 130 or 1, as locally)."""
        from ray.exceptions import RayActorError

        resume = False
        while True:
            self.attempts += 1
            try:
                return self._attempt(resume)
            except (RayActorError, WorkerDied) as exc:
                if self.cancel_requested:
                    ckpt = self.spec.checkpoint()
                    self._event("cancelled", message="stopped on request; the worker ended before the run did",
                                checkpoint=str(ckpt.resolve()) if ckpt else None,
                                hint="run the same command with --resume to continue" if ckpt else
                                "nothing was saved; run the command again")
                    return 130
                if self.attempts > self.retries:
                    raise MiloError(f"the Ray worker running {self.spec.name} died {self.attempts} times "
                                    f"(last: {type(exc).__name__})",
                                    hint="see `ray status` and the worker logs on the cluster; "
                                         "run the same command with --resume to continue") from None
                ckpt = self.spec.checkpoint() if self.spec.resumable else None
                resume = ckpt is not None
                self._event("warning", message=f"the Ray worker running {self.spec.name} died "
                                               f"({type(exc).__name__}); starting it again "
                            + (f"from the last checkpoint ({ckpt})" if resume else "from the beginning"),
                            hint=f"attempt {self.attempts + 1} of {self.retries + 1}")

    def _attempt(self, resume: bool) -> int:
        ray = self.ray
        cpus, gpus = self.resources
        actor_cls = ray.remote(BackendJob).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        actor = actor_cls.remote()
        try:
            return self._drive(actor, resume, cpus)
        finally:
            try:
                ray.get(actor.cleanup.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead worker has nothing left to clean
                pass
            ray.kill(actor)

    def _call(self, ref):
        from ray.exceptions import GetTimeoutError

        while True:  # wait in slices, so that a cancel while the job is queued is seen
            try:
                return self.ray.get(ref, timeout=1.0)
            except GetTimeoutError:
                if self.force_stop or (self.cancel_requested and not self._started):
                    raise WorkerDied("cancelled while waiting") from None

    def _drive(self, actor, resume: bool, cpus: int) -> int:
        self._started = False
        info = self._call(actor.info.remote())
        self._event("log", message=f"running on Ray: {info['host']}, worker pid {info['pid']}",
                    worker_pid=info["pid"], worker_host=info["host"], attempt=self.attempts)
        path_map = self.spec.path_map(info["root"])
        in_flight: list = []

        def send(chunk: bytes) -> None:
            in_flight.append(actor.receive.remote(chunk))
            if len(in_flight) > UPLOADS_IN_FLIGHT:
                self._call(in_flight.pop(0))
        pack(self.spec.uploads(), send, path_map)
        for ref in in_flight:
            self._call(ref)
        commands = [list(c) for c in self.spec.commands]
        if resume and "--resume" not in commands[0]:
            commands[0].append("--resume")
        self._call(actor.start.remote(commands, list(self.spec.outputs), cpus))
        self._started = True
        mirrors = {arc: FolderMirror(self.spec.folders[arc], path_map) for arc in self.spec.outputs}
        cursor, held, cancel_sent = 0, [], False
        while True:
            if self.force_stop:
                raise WorkerDied("stopped")
            if self.cancel_requested and not cancel_sent:
                actor.cancel.remote()
                cancel_sent = True
            reply = self._call(actor.poll.remote(cursor))
            for piece in reply["files"]:
                mirrors[piece["folder"]].apply(piece)
            cursor += len(reply["events"])
            held += reply["events"]
            if reply["stderr"]:
                self.on_stderr(reply["stderr"])
            if not reply["more"]:  # every file an event names is here now
                for line in held:
                    self._forward(line, path_map)
                held = []
                if reply["exit"] is not None:
                    return reply["exit"]
                time.sleep(POLL_S)

    def _forward(self, line: str, path_map: PathMap) -> None:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            self._event("log", message=line)
            return
        if isinstance(obj, dict) and "event" in obj:
            self.on_event(path_map.to_local(obj))


# -- the CLI's `--ray` ----------------------------------------------------------------------------
def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on a Ray cluster: ray://HOST:10001 (Ray Client), HOST:6379 on a cluster node, or auto")
    p.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="CPUs per job on the cluster (default: one node's, or its share per GPU)")
    p.add_argument("--ray-runtime-env", default=None, metavar="JSON",
                   help="Ray runtime environment for the job, e.g. '{\"pip\": [\"milo-backend\"]}'")


RAY_DESTS = ("ray", "ray_cpus", "ray_runtime_env", "json")


def runtime_env(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text)
    except (json.JSONDecodeError, OSError) as exc:
        raise MiloError(f"--ray-runtime-env is not JSON: {exc}",
                        hint="give a JSON object or a file holding one, e.g. '{\"pip\": [\"milo-backend\"]}'") from None
    if not isinstance(value, dict):
        raise MiloError("--ray-runtime-env must be a JSON object", hint="e.g. '{\"pip\": [\"milo-backend\"]}'")
    return value


def command_line(sub: argparse.ArgumentParser, args: argparse.Namespace, replace: dict[str, str]) -> list[str]:
    """The argument list that re-creates `args` for `sub` (defaults left out), with some values replaced."""
    positional, options = [], []
    for action in sub._actions:
        if action.dest in RAY_DESTS or isinstance(action, argparse._HelpAction):
            continue
        value = replace.get(action.dest, getattr(args, action.dest, None))
        if not action.option_strings:
            positional.append(str(value))
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            options += [flag] if value else []
        elif value is not None and (value != action.default or action.dest in replace):
            options += [flag, *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
    return positional + options


def _external_images(run: Path) -> dict[Path, set[str]]:
    """Folders outside `run` holding the images its cameras.json names (extract reads them)."""
    try:
        cams = json.loads(RunFolder(run).cameras.read_text(encoding="utf-8"))["cameras"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # the backend reports a missing or broken cameras.json itself
    folders: dict[Path, set[str]] = {}
    for cam in cams:
        if not cam.get("image_path"):
            continue
        path = Path(os.path.abspath(cam["image_path"]))
        if not is_inside(str(path), str(run.resolve())) and path.is_file():
            folders.setdefault(path.parent, set()).add(str(path.resolve()))
    return folders


def job_spec(sub: argparse.ArgumentParser, args: argparse.Namespace) -> JobSpec:
    """What `train`, `extract` or `render` with these arguments sends and gets back."""
    cmd = args.command

    def must_exist(path: Path, what: str) -> Path:
        if not path.exists():
            raise MiloError(f"{what} not found: {path}", hint="give a path on this computer; it is sent to the cluster",
                            path=path)
        return path

    if cmd == "train":
        data = must_exist(args.data, "dataset or photos folder")
        arc = f"in0/{data.name or 'data'}"
        folders = {arc: data, "out": args.out}
        replace = {"data": f"{ROOT_TOKEN}/{arc}", "out": f"{ROOT_TOKEN}/out"}
        extra = []
        if args.depth_prior is not None:
            prior = must_exist(args.depth_prior, "depth prior network")
            folders[f"in1/{prior.name}"] = prior
            replace["depth_prior"] = f"{ROOT_TOKEN}/in1/{prior.name}"
            extra.append(Upload(prior, f"in1/{prior.name}"))
        def uploads() -> list[Upload]:  # per attempt: the run folder as it is now (a new worker resumes from it)
            return [Upload(data, arc), *extra, *([Upload(args.out, "out")] if args.out.is_dir() else [])]
        return JobSpec("train", [["train", *command_line(sub, args, replace)]], folders, uploads, ("out",),
                       args.device, resumable=True)
    if cmd == "extract":
        run = must_exist(args.run, "training run")
        folders = {"out": run}
        extra = []
        for k, (folder, files) in enumerate(sorted(_external_images(run).items())):
            folders[f"ext{k}"] = folder
            extra.append(Upload(folder, f"ext{k}", only=frozenset(files)))
        uploads = lambda: [Upload(run, "out"), *extra]  # noqa: E731
        return JobSpec("extract", [["extract", *command_line(sub, args, {"run": f"{ROOT_TOKEN}/out"})]], folders,
                       uploads, ("out",), args.device)
    if cmd == "render":
        source = must_exist(args.source, "Gaussians")
        cameras = must_exist(args.cameras, "cameras file")
        folders = {f"in0/{source.name}": source, f"in1/{cameras.name}": cameras, "out": args.out}
        replace = {"source": f"{ROOT_TOKEN}/in0/{source.name}", "cameras": f"{ROOT_TOKEN}/in1/{cameras.name}",
                   "out": f"{ROOT_TOKEN}/out"}
        uploads = lambda: [Upload(source, f"in0/{source.name}", skip=("previews", "sfm", "triangulation")),  # noqa
                           Upload(cameras, f"in1/{cameras.name}")]
        return JobSpec("render", [["render", *command_line(sub, args, replace)]], folders, uploads, ("out",),
                       args.device)
    raise MiloError(f"{cmd} does not run on Ray", hint="--ray works with train, extract, render and batch")


class StopSignals:
    """SIGINT/SIGTERM while a remote job runs: the first stops it after a checkpoint, the second at once."""

    def __init__(self, on_stop: Callable[[bool], None]):
        self.on_stop, self.count, self._old = on_stop, 0, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.count += 1
        self.on_stop(self.count > 1)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_on_ray(sub: argparse.ArgumentParser, args: argparse.Namespace, reporter) -> int:
    """`train|extract|render ... --ray ADDRESS`: the job on the cluster, its events and files here."""
    import contextlib
    import sys

    from milo_backend.run_folder import locked_run_folder

    spec = job_spec(sub, args)
    env = runtime_env(args.ray_runtime_env)
    lock = locked_run_folder(args.out if args.command == "train" else args.run) \
        if args.command in ("train", "extract") else contextlib.nullcontext()
    with lock:
        reporter.stage("ray", f"Connecting to the Ray cluster at {args.ray}")
        ray = connect(args.ray, env)
        try:
            cluster = check_cluster(ray, args.ray)
            resources = cluster.job_resources(spec.device, args.ray_cpus)

            def forward(obj: dict) -> None:
                reporter.emit(obj["event"], **{k: v for k, v in obj.items() if k not in ("event", "v", "time")})
            job = RemoteRun(ray, spec, resources, forward, on_stderr=lambda text: sys.stderr.write(text))
            reporter.log(f"{spec.name} on the Ray cluster at {args.ray}: {resources[0]} CPU(s), {resources[1]} GPU(s)")
            with StopSignals(lambda force: job.cancel(force)):
                return job.run()
        finally:
            ray.shutdown()
