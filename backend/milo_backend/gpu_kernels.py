"""Where this machine's CUDA kernels come from, and why: `doctor`, `setup-gpu` and the renderers ask here.

Two libraries have CUDA kernels: gsplat (the Gaussian renderer) and nvdiffrast (the mesh rasteriser).
For each, in order of preference:
1. kernels already on disk: a prebuilt wheel's compiled module, or an earlier JIT build in torch's cache;
2. a prebuilt wheel that matches this torch, CUDA, Python and platform (gsplat publishes some; no
   compiler needed), installed by `milo-backend setup-gpu`;
3. a JIT build with the CUDA compiler (nvcc of torch's CUDA major version, and ninja): minutes, once;
4. none: the torch path runs on CUDA (same pictures and gradients, slower), and the reason is said.

The decision (`plan_gsplat`, `plan_nvdiffrast`) is a pure function of `KernelFacts`, so it is tested on
any machine; `gather_facts` reads the facts without building anything.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Callable

GSPLAT_VERSION = "1.5.3"
GSPLAT_WHEEL_INDEX = "https://docs.gsplat.studio/whl/"
GSPLAT_JIT_NAME = "gsplat_cuda"
BUILD_MINUTES = {"gsplat": "3-15", "nvdiffrast": "1-3"}  # first build, by core count (a hint, not a promise)


@dataclass(frozen=True)
class KernelFacts:
    """What decides the kernel source; read by `gather_facts`, written by hand in tests."""

    cuda: bool                      # torch sees a CUDA GPU
    torch_version: str              # "2.4.1+cu124"
    torch_cuda: str | None          # CUDA version torch was built with ("12.4"), None for CPU builds
    python_tag: str                 # "cp311"
    platform_tag: str               # "linux_x86_64", "win_amd64"
    nvcc_version: str | None = None  # "12.4" when a CUDA compiler is found
    ninja: bool = False
    gsplat_installed: bool = True
    gsplat_built: bool = False      # gsplat's compiled module is importable or its JIT build is cached
    nvdiffrast_installed: bool = False
    nvdiffrast_built: bool = False  # nvdiffrast's JIT build for this torch is cached


@dataclass
class KernelPlan:
    """The kernel source one library will use on CUDA, in words a user can act on."""

    library: str                    # "gsplat" | "nvdiffrast"
    component: str                  # "Gaussian renderer" | "mesh rasteriser"
    source: str                     # "built" | "prebuilt wheel" | "jit build" | "none"
    active: str                     # what renders on CUDA after this plan: the library or "torch"
    why: str
    install: list[str] = field(default_factory=list)  # pip arguments of a prebuilt wheel

    def to_json(self) -> dict:
        return asdict(self)


def torch_tag(torch_version: str, torch_cuda: str | None) -> str | None:
    """gsplat's wheel-index tag for a torch build: "pt24cu124" for 2.4.1 with CUDA 12.4."""
    m = re.match(r"(\d+)\.(\d+)", torch_version)
    if not m or not torch_cuda:
        return None
    return f"pt{m.group(1)}{m.group(2)}cu{torch_cuda.replace('.', '')}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href") or ""
            self.names.append(href.split("#")[0].rsplit("/", 1)[-1].replace("%2B", "+"))


def matching_gsplat_wheels(index_html: str, tag: str, python_tag: str, platform_tag: str,
                           version: str = GSPLAT_VERSION) -> list[str]:
    """Wheel file names in a gsplat index page that install on this torch build, Python and platform."""
    parser = _Links()
    parser.feed(index_html)
    head = rf"gsplat-{re.escape(version)}\+{tag}-{python_tag}-{python_tag}-"
    if platform_tag.startswith("linux") and platform_tag.endswith("x86_64"):
        tail = r"(?:linux|manylinux[0-9a-z_]*)_x86_64"  # any linux x86-64 build runs here
    else:
        tail = re.escape(platform_tag)
    want = re.compile(rf"^{head}{tail}\.whl$")
    return sorted({n for n in parser.names if want.match(n)})


def _cuda_major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def _jit_blocker(facts: KernelFacts) -> str | None:
    """Why a JIT build cannot run here, or None when it can."""
    if facts.nvcc_version is None:
        return "no CUDA compiler (nvcc) was found"
    if _cuda_major(facts.nvcc_version) != _cuda_major(facts.torch_cuda):
        return (f"the CUDA compiler is {facts.nvcc_version} but PyTorch was built with CUDA "
                f"{facts.torch_cuda}: their major versions must match")
    if not facts.ninja:
        return "ninja (the build tool torch's JIT uses) is not installed"
    return None


def _not_on_cuda(facts: KernelFacts, library: str, component: str) -> KernelPlan | None:
    if not facts.cuda:
        why = ("PyTorch is a CPU build" if not facts.torch_cuda else "PyTorch sees no CUDA GPU")
        return KernelPlan(library, component, "none", "torch", f"{why}: the {component} runs in PyTorch on the CPU")
    return None


def plan_gsplat(facts: KernelFacts, prebuilt_wheels: list[str] | None = None) -> KernelPlan:
    """Where gsplat's kernels come from. `prebuilt_wheels`: matching names from gsplat's index (None:
    the index was not asked, for instance offline)."""
    lib, comp = "gsplat", "Gaussian renderer"
    plan = _not_on_cuda(facts, lib, comp)
    if plan:
        return plan
    if not facts.gsplat_installed:
        return KernelPlan(lib, comp, "none", "torch", "gsplat is not installed: the torch renderer runs on CUDA")
    if facts.gsplat_built:
        return KernelPlan(lib, comp, "built", lib, "gsplat's CUDA kernels are built and load")
    if prebuilt_wheels:
        tag = torch_tag(facts.torch_version, facts.torch_cuda)
        return KernelPlan(lib, comp, "prebuilt wheel", lib,
                          f"gsplat publishes a prebuilt wheel for PyTorch {facts.torch_version} and "
                          f"{facts.python_tag}: no compiler needed",
                          install=[f"gsplat=={GSPLAT_VERSION}+{tag}", "--index-url",
                                   f"{GSPLAT_WHEEL_INDEX}{tag}", "--no-deps", "--force-reinstall"])
    blocker = _jit_blocker(facts)
    if blocker is None:
        return KernelPlan(lib, comp, "jit build", lib,
                          f"no prebuilt gsplat wheel for PyTorch {facts.torch_version} and {facts.python_tag}; "
                          f"the CUDA compiler {facts.nvcc_version} builds the kernels once "
                          f"({BUILD_MINUTES[lib]} minutes)")
    looked = ("gsplat's wheel index was not reachable" if prebuilt_wheels is None else
              f"gsplat publishes no prebuilt wheel for PyTorch {facts.torch_version} (CUDA {facts.torch_cuda}) "
              f"and {facts.python_tag}")
    return KernelPlan(lib, comp, "none", "torch",
                      f"{looked}, and {blocker}: the torch renderer runs on CUDA (same results, slower). "
                      f"Install the CUDA toolkit {_cuda_major(facts.torch_cuda)}.x and ninja, then run "
                      f"'milo-backend setup-gpu' to build gsplat")


def plan_nvdiffrast(facts: KernelFacts) -> KernelPlan:
    """Where nvdiffrast's kernels come from (it publishes no prebuilt wheels: built or JIT or none)."""
    lib, comp = "nvdiffrast", "mesh rasteriser"
    plan = _not_on_cuda(facts, lib, comp)
    if plan:
        return plan
    if not facts.nvdiffrast_installed:
        return KernelPlan(lib, comp, "none", "torch",
                          "nvdiffrast is not installed (pip install diffrp-nvdiffrast; non-commercial licence): "
                          "the torch mesh rasteriser runs on CUDA")
    if facts.nvdiffrast_built:
        return KernelPlan(lib, comp, "built", lib, "nvdiffrast's CUDA plugin is built and loads")
    blocker = _jit_blocker(facts)
    if blocker is None:
        return KernelPlan(lib, comp, "jit build", lib,
                          f"the CUDA compiler {facts.nvcc_version} builds nvdiffrast's plugin once "
                          f"({BUILD_MINUTES[lib]} minutes)")
    return KernelPlan(lib, comp, "none", "torch",
                      f"nvdiffrast publishes no prebuilt kernels and {blocker}: the torch mesh rasteriser runs "
                      f"on CUDA (same results, slower)")


# -- reading the facts (no builds) ----------------------------------------------------------------------
def _nvcc_version() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [shutil.which("nvcc")]
    if CUDA_HOME:
        candidates.append(f"{CUDA_HOME}/bin/nvcc")
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"release (\d+\.\d+)", out)
        if m:
            return m.group(1)
    return None


def _jit_cached(name: str) -> bool:
    from pathlib import Path

    from torch.utils.cpp_extension import _get_build_directory

    try:
        build = Path(_get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001 - an unwritable cache folder: not built
        return False
    return any(build.glob(f"{name}*.so")) or any(build.glob(f"{name}*.pyd"))


def _nvdiffrast_plugin_name() -> str | None:
    try:
        import nvdiffrast
        import torch
    except ImportError:
        return None
    name = f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}"
    return re.sub(r"[^0-9a-zA-Z_]", "_", name)  # as nvdiffrast's own sanitize_name


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def gather_facts() -> KernelFacts:
    import torch

    plugin = _nvdiffrast_plugin_name()
    gsplat = importlib.util.find_spec("gsplat") is not None
    return KernelFacts(
        cuda=torch.cuda.is_available(), torch_version=torch.__version__, torch_cuda=torch.version.cuda,
        python_tag=python_tag(), platform_tag=platform_tag(),
        nvcc_version=_nvcc_version(), ninja=shutil.which("ninja") is not None,
        gsplat_installed=gsplat,
        gsplat_built=gsplat and (importlib.util.find_spec("gsplat.csrc") is not None or _jit_cached(GSPLAT_JIT_NAME)),
        nvdiffrast_installed=plugin is not None,
        nvdiffrast_built=plugin is not None and _jit_cached(plugin),
    )


def fetch_gsplat_wheels(facts: KernelFacts, timeout_s: float = 20.0) -> list[str] | None:
    """Matching prebuilt gsplat wheels from gsplat's index, or None when the index cannot be read (or
    MILO_OFFLINE is set)."""
    import urllib.error
    import urllib.request

    tag = torch_tag(facts.torch_version, facts.torch_cuda)
    if tag is None:
        return []
    if os.environ.get("MILO_OFFLINE"):  # a machine without internet: do not wait for a timeout
        return None
    try:
        with urllib.request.urlopen(f"{GSPLAT_WHEEL_INDEX}{tag}/gsplat/", timeout=timeout_s) as resp:
            html = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return [] if exc.code == 404 else None  # 404: no wheels at all for this torch + CUDA
    except (OSError, ValueError):
        return None
    return matching_gsplat_wheels(html, tag, facts.python_tag, facts.platform_tag)


# -- building with a voice ------------------------------------------------------------------------------
def with_heartbeat(work: Callable[[], object], say: Callable[[str], None], label: str,
                   every_s: float = 20.0) -> object:
    """Run `work` (a build that prints nothing for minutes) while `say` reports the elapsed time every
    `every_s` seconds, so a progress display never looks frozen."""
    done = threading.Event()
    start = time.monotonic()

    def beat():
        while not done.wait(every_s):
            say(f"{label}: still building, {time.monotonic() - start:.0f} s so far")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        return work()
    finally:
        done.set()
        thread.join(timeout=1.0)


def load_gsplat_kernels() -> None:
    # gsplat prints its build status to stdout, which carries the JSON events: send it to stderr
    with contextlib.redirect_stdout(sys.stderr):
        from gsplat.cuda._backend import _C
    if _C is None:
        raise RuntimeError("gsplat's CUDA kernels did not load (see the messages above)")


def load_nvdiffrast_kernels() -> None:
    import nvdiffrast.torch as dr
    dr.RasterizeCudaContext()


LOADERS = {"gsplat": load_gsplat_kernels, "nvdiffrast": load_nvdiffrast_kernels}


_ACTIVE: dict[str, KernelPlan] = {}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def active(library: str, say: Callable[[str], None] | None = None) -> KernelPlan:
    """The plan this process runs `library` with, decided (and kernels loaded or built) on first use.
    No network here: prebuilt wheels are installed by `setup-gpu`, not in the middle of a training."""
    if library not in _ACTIVE:
        facts = gather_facts()
        plan = plan_gsplat(facts, prebuilt_wheels=[]) if library == "gsplat" else plan_nvdiffrast(facts)
        _ACTIVE[library] = prepare(plan, say or _stderr)
    return _ACTIVE[library]


def prepare(plan: KernelPlan, say: Callable[[str], None] = _stderr) -> KernelPlan:
    """Load (or build, with a heartbeat) the kernels of a plan whose source is "built" or "jit build".
    Returns the plan as it turned out: a failed build falls back to torch and says why."""
    if plan.source not in ("built", "jit build"):
        return plan
    label = f"{plan.library}'s CUDA kernels"
    if plan.source == "jit build":
        say(f"Building {label} (first use only, {BUILD_MINUTES[plan.library]} minutes)")
    start = time.monotonic()
    try:
        with_heartbeat(LOADERS[plan.library], say, f"Building {label}")
    except Exception as exc:  # noqa: BLE001 - a failed build means the torch path, said plainly
        return KernelPlan(plan.library, plan.component, "none", "torch",
                          f"{label} failed to {'build' if plan.source == 'jit build' else 'load'} "
                          f"({type(exc).__name__}: {str(exc)[:300]}): the torch {plan.component} runs on CUDA")
    if plan.source == "jit build":
        say(f"Built {label} in {time.monotonic() - start:.0f} s")
    return KernelPlan(plan.library, plan.component, "built", plan.library,
                      f"{label} are built and load")


def setup(reporter, pip=subprocess.run) -> dict:
    """`milo-backend setup-gpu`: install gsplat's prebuilt wheel where one matches, else build the
    kernels with the CUDA compiler where there is one, else say why the torch path runs. Each step
    reports progress; returns the final plans."""
    reporter.stage("setup-gpu", "Looking for the fastest GPU path")
    facts = gather_facts()
    wheels = None if (facts.gsplat_built or not facts.cuda) else fetch_gsplat_wheels(facts)
    gs = plan_gsplat(facts, wheels)
    if gs.source == "prebuilt wheel":
        reporter.stage("setup-gpu", f"Installing gsplat's prebuilt wheel ({gs.install[0]})")
        done = pip([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar",
                    "off", *gs.install], capture_output=True, text=True)
        if done.returncode != 0:
            reporter.warning("gsplat's prebuilt wheel did not install",
                             hint=(done.stderr or done.stdout or "").strip()[-500:])
        importlib.invalidate_caches()
        facts = gather_facts()
        gs = plan_gsplat(facts, [])
    plans = [prepare(gs, reporter.log), prepare(plan_nvdiffrast(facts), reporter.log)]
    _say(reporter, plans)
    return {plan.library: plan.to_json() for plan in plans}


def announce(reporter, libraries: tuple[str, ...] = ("gsplat", "nvdiffrast")) -> list[KernelPlan]:
    """Before work on CUDA: load or build each library's kernels with progress messages, then say which
    path runs and why (a warning when one falls back to torch)."""
    reporter.stage("kernels", "Loading the CUDA kernels")
    plans = [active(lib, reporter.log) for lib in libraries]
    _say(reporter, plans)
    return plans


def _say(reporter, plans: list[KernelPlan]) -> None:
    for plan in plans:
        if plan.active == "torch":
            reporter.warning(f"{plan.component} on CUDA: the PyTorch path", hint=plan.why)
        else:
            reporter.log(f"{plan.component} on CUDA: {plan.library} ({plan.why})")
