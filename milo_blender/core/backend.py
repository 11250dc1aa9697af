"""Where the backend lives and how it is called: the Python to use, the argument lists, and the steps
that set up a private environment for it. Argument lists only, never shell strings, so paths with
spaces or any characters pass through untouched.

Which Python runs the backend, first match wins:
1. the environment variable MILO_BACKEND_PYTHON (tests, studio pipelines),
2. the "Backend Python" preference (an existing environment the user pointed to),
3. the environment "Set up backend" created under the extension's user folder.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from milo_backend.config import BASE_ITERATIONS, DEVICES, SCENES
from milo_backend.config import PRESETS as _BACKEND_PRESETS
from milo_backend.errors import MiloError

from .job import Step

BACKEND_PYTHON_ENV = "MILO_BACKEND_PYTHON"
BACKEND_MODULE = "milo_backend"
PRESETS = tuple(_BACKEND_PRESETS)  # smallest to largest
SETUP_HINT = "Preferences > Add-ons > MILo: click 'Set up backend', or point 'Backend Python' to an environment"


def venv_python(venv_dir: str | Path) -> Path:
    venv_dir = Path(venv_dir)
    return venv_dir / "Scripts" / "python.exe" if sys.platform == "win32" else venv_dir / "bin" / "python"


def resolve_backend_python(preference: str, managed_venv: str | Path,
                           environ: dict | None = None) -> Path:
    """The interpreter that runs the backend, or a MiloError saying how to get one."""
    environ = os.environ if environ is None else environ
    for origin, value in ((f"the {BACKEND_PYTHON_ENV} environment variable", environ.get(BACKEND_PYTHON_ENV, "")),
                          ("the 'Backend Python' preference", preference or "")):
        if value.strip():
            path = Path(value.strip()).expanduser()
            if path.is_dir():  # a venv folder was chosen rather than its interpreter
                path = venv_python(path)
            if not path.is_file():
                raise MiloError(f"backend Python not found: {path} (from {origin})",
                                hint="choose an existing python executable, or clear it and " + SETUP_HINT, path=path)
            return path
    managed = venv_python(managed_venv)
    if managed.is_file():
        return managed
    raise MiloError("the MILo backend is not set up yet", hint=SETUP_HINT, path=managed)


def backend_command(python: str | Path, subcommand: str, *args: str | Path) -> list[str]:
    return [str(python), "-m", BACKEND_MODULE, subcommand, *[str(a) for a in args], "--json"]


@dataclass(frozen=True)
class TrainOptions:
    source: Path               # photos folder, COLMAP dataset or transforms.json dataset
    output: Path
    preset: str = "default"
    scene: str = "outdoor"
    iterations: int = BASE_ITERATIONS
    device: str = "auto"
    max_size: int = 0          # 0: the backend's default
    resume: bool = False
    ray_address: str = ""      # "": this computer; else the Ray cluster that runs the job (ray://HOST:PORT)

    def args(self) -> list[str]:
        if self.preset not in PRESETS or self.scene not in SCENES or self.device not in DEVICES:
            raise ValueError(f"invalid options {self}")
        args = [str(self.source), str(self.output), "--preset", self.preset, "--scene", self.scene,
                "--iterations", str(int(self.iterations)), "--device", self.device]
        if self.max_size > 0:
            args += ["--max-size", str(int(self.max_size))]
        if self.resume:
            args.append("--resume")
        if self.ray_address.strip():
            args += ["--ray", self.ray_address.strip()]
        return args


def train_command(python: str | Path, options: TrainOptions) -> list[str]:
    return backend_command(python, "train", *options.args())


def doctor_command(python: str | Path) -> list[str]:
    return backend_command(python, "doctor")


# -- "Set up backend" -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NvidiaGpu:
    name: str
    driver: str
    compute_capability: float | None


def detect_nvidia_gpu(run=subprocess.run) -> NvidiaGpu | None:
    """The first NVIDIA GPU according to nvidia-smi (installed with the driver), or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = run([exe, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                  capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    fields = [f.strip() for f in out.stdout.strip().splitlines()[0].split(",")]
    if len(fields) < 2:
        return None
    try:
        cc = float(fields[2]) if len(fields) > 2 else None
    except ValueError:
        cc = None
    return NvidiaGpu(name=fields[0], driver=fields[1], compute_capability=cc)


TORCH_INDEX = "https://download.pytorch.org/whl/"


def torch_install_args(system: str, gpu: NvidiaGpu | None) -> tuple[list[str], str]:
    """pip arguments installing PyTorch for this machine, and a description.

    Linux wheels on PyPI are already CUDA builds (with the CUDA runtime as pip packages, no toolkit
    needed); Windows ones are CPU-only, so an NVIDIA GPU there takes the CUDA index; without a GPU on
    Linux the CPU index avoids gigabytes of CUDA libraries; macOS wheels on PyPI use Metal.
    """
    if system == "Darwin":
        return ["torch"], "PyTorch (Apple Metal / CPU)"
    if gpu is None:
        return ["torch", "--index-url", TORCH_INDEX + "cpu"], "PyTorch (CPU)"
    major = int(gpu.driver.split(".")[0]) if re.match(r"^\d+", gpu.driver) else 0
    if major and major < 525:
        return ["torch", "--index-url", TORCH_INDEX + "cpu"], \
            f"PyTorch (CPU: NVIDIA driver {gpu.driver} is too old for CUDA 12, update it for GPU training)"
    if system == "Windows":
        # Blackwell (compute 12.x) needs CUDA 12.8 builds; older GPUs are covered by 12.6
        cuda = "cu128" if (gpu.compute_capability or 0) >= 10 else "cu126"
        return ["torch", "--index-url", TORCH_INDEX + cuda], f"PyTorch (CUDA, {gpu.name})"
    return ["torch"], f"PyTorch (CUDA, {gpu.name})"


def setup_steps(base_python: str | Path, venv_dir: str | Path, backend_wheel: str | Path,
                gpu: NvidiaGpu | None, system: str | None = None) -> list[Step]:
    """Create a venv, install PyTorch and the bundled backend wheel into it, then run `doctor`."""
    system = system or platform.system()
    py = venv_python(venv_dir)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    torch_args, torch_label = torch_install_args(system, gpu)
    cuda = gpu is not None and system != "Darwin"
    wheel = str(backend_wheel) + ("[cuda]" if cuda else "")
    steps = [
        Step([str(base_python), "-m", "venv", str(venv_dir)], "Creating the Python environment", json=False),
        Step(pip + torch_args, f"Installing {torch_label}", json=False),
        Step(pip + [wheel], "Installing the MILo backend", json=False),
    ]
    if cuda:  # a prebuilt gsplat wheel where one matches, else a build with progress, else the torch path
        steps.append(Step(backend_command(py, "setup-gpu"), "Setting up the GPU kernels"))
    return steps + [Step(doctor_command(py), "Checking the backend")]


def bundled_backend_wheel(extension_dir: str | Path) -> Path:
    """The backend wheel shipped inside the extension (wheels/milo_backend-*.whl)."""
    wheels = sorted(Path(extension_dir, "wheels").glob("milo_backend-*.whl"))
    if not wheels:
        raise MiloError(f"no backend wheel in {Path(extension_dir, 'wheels')}",
                        hint="reinstall the extension from its release zip", path=Path(extension_dir, "wheels"))
    return wheels[-1]
