"""Where the CUDA kernels come from: the selection is decided from facts, so it is tested without a GPU."""
import dataclasses
import json
import subprocess
import sys
import time

import pytest

from milo_backend import gpu_kernels as gk
from milo_backend.events import NullReporter

# gsplat's index publishes 1.5.3 for Python 3.10 only (read from docs.gsplat.studio/whl/ on 2026-12-07)
INDEX = """<html><body>
<a href="../gsplat-1.5.3%2Bpt24cu124-cp310-cp310-linux_x86_64.whl#sha256=ab">gsplat-1.5.3+pt24cu124-cp310-cp310-linux_x86_64.whl</a>
<a href="gsplat-1.5.3+pt24cu124-cp310-cp310-win_amd64.whl">x</a>
<a href="gsplat-1.5.2+pt24cu124-cp311-cp311-linux_x86_64.whl">x</a>
</body></html>"""

GPU = gk.KernelFacts(cuda=True, torch_version="2.4.1+cu124", torch_cuda="12.4", python_tag="cp310",
                     platform_tag="linux_x86_64", nvcc_version=None, ninja=True, gsplat_installed=True,
                     nvdiffrast_installed=True)


def test_torch_tag_names_gsplat_wheel_index():
    assert gk.torch_tag("2.4.1+cu124", "12.4") == "pt24cu124"
    assert gk.torch_tag("2.11.0+cu130", "13.0") == "pt211cu130"
    assert gk.torch_tag("2.13.0+cpu", None) is None


def test_matching_wheels_follow_python_platform_and_version():
    assert gk.matching_gsplat_wheels(INDEX, "pt24cu124", "cp310", "linux_x86_64") == \
        ["gsplat-1.5.3+pt24cu124-cp310-cp310-linux_x86_64.whl"]
    assert gk.matching_gsplat_wheels(INDEX, "pt24cu124", "cp310", "win_amd64") == \
        ["gsplat-1.5.3+pt24cu124-cp310-cp310-win_amd64.whl"]
    assert gk.matching_gsplat_wheels(INDEX, "pt24cu124", "cp311", "linux_x86_64") == []  # only 1.5.2 for cp311
    assert gk.matching_gsplat_wheels(INDEX, "pt24cu121", "cp310", "linux_x86_64") == []


def test_cpu_torch_uses_the_torch_path():
    plan = gk.plan_gsplat(dataclasses.replace(GPU, cuda=False, torch_cuda=None))
    assert (plan.active, plan.source) == ("torch", "none") and "CPU build" in plan.why


def test_built_kernels_win_over_everything():
    plan = gk.plan_gsplat(dataclasses.replace(GPU, gsplat_built=True), prebuilt_wheels=["w.whl"])
    assert (plan.active, plan.source, plan.install) == ("gsplat", "built", [])


def test_a_matching_prebuilt_wheel_needs_no_compiler():
    plan = gk.plan_gsplat(GPU, prebuilt_wheels=["gsplat-1.5.3+pt24cu124-cp310-cp310-linux_x86_64.whl"])
    assert plan.source == "prebuilt wheel" and plan.active == "gsplat"
    assert plan.install[:3] == ["gsplat==1.5.3+pt24cu124", "--index-url", "https://docs.gsplat.studio/whl/pt24cu124"]
    assert "no compiler" in plan.why


def test_a_matching_compiler_builds_once_and_says_how_long():
    plan = gk.plan_gsplat(dataclasses.replace(GPU, nvcc_version="12.6"), prebuilt_wheels=[])
    assert (plan.source, plan.active) == ("jit build", "gsplat") and "minutes" in plan.why


@pytest.mark.parametrize("facts, wheels, reason", [
    (GPU, [], "no CUDA compiler"),
    (dataclasses.replace(GPU, nvcc_version="11.8"), [], "compiler is 11.8 but PyTorch was built with CUDA 12.4"),
    (dataclasses.replace(GPU, nvcc_version="12.4", ninja=False), [], "ninja"),
    (GPU, None, "index was not reachable"),
])
def test_no_kernels_falls_back_to_torch_on_cuda_and_says_why(facts, wheels, reason):
    plan = gk.plan_gsplat(facts, prebuilt_wheels=wheels)
    assert (plan.source, plan.active) == ("none", "torch")
    assert reason in plan.why and "setup-gpu" in plan.why


def test_nvdiffrast_plans():
    assert gk.plan_nvdiffrast(dataclasses.replace(GPU, nvdiffrast_installed=False)).active == "torch"
    assert gk.plan_nvdiffrast(dataclasses.replace(GPU, nvdiffrast_built=True)).source == "built"
    assert gk.plan_nvdiffrast(dataclasses.replace(GPU, nvcc_version="12.1")).source == "jit build"
    none = gk.plan_nvdiffrast(GPU)
    assert none.active == "torch" and "no prebuilt kernels" in none.why


def test_a_long_build_is_never_silent():
    said = []
    assert gk.with_heartbeat(lambda: time.sleep(0.5) or 7, said.append, "Building x", every_s=0.1) == 7
    assert said and all("still building" in s for s in said)


def test_a_failed_build_falls_back_to_torch_with_the_reason(monkeypatch):
    def broken():
        raise RuntimeError("nvcc fatal: unsupported gpu architecture")
    monkeypatch.setitem(gk.LOADERS, "gsplat", broken)
    said = []
    plan = gk.prepare(gk.plan_gsplat(dataclasses.replace(GPU, nvcc_version="12.4"), []), said.append)
    assert (plan.active, plan.source) == ("torch", "none") and "unsupported gpu architecture" in plan.why
    assert said[0].startswith("Building gsplat's CUDA kernels (first use only")


def test_setup_installs_a_prebuilt_wheel_with_an_argument_list(monkeypatch):
    facts = [GPU, dataclasses.replace(GPU, gsplat_built=True)]  # before and after the install
    monkeypatch.setattr(gk, "gather_facts", lambda: facts.pop(0) if len(facts) > 1 else facts[0])
    monkeypatch.setattr(gk, "fetch_gsplat_wheels", lambda f: ["gsplat-1.5.3+pt24cu124-cp310-cp310-linux_x86_64.whl"])
    monkeypatch.setitem(gk.LOADERS, "gsplat", lambda: None)
    calls = []

    def pip(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    reporter = NullReporter()
    out = gk.setup(reporter, pip=pip)
    assert calls[0][:4] == [sys.executable, "-m", "pip", "install"] and "gsplat==1.5.3+pt24cu124" in calls[0]
    assert out["gsplat"]["active"] == "gsplat" and out["nvdiffrast"]["active"] == "torch"
    assert any("PyTorch path" in w["message"] for w in reporter.of("warning"))


def test_setup_gpu_and_doctor_on_this_machine_say_which_path_runs(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("checks the CPU answer")
    run = subprocess.run([sys.executable, "-m", "milo_backend", "setup-gpu", "--json"], capture_output=True,
                         text=True, timeout=600)
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0, run.stderr
    kernels = events[-1]["outputs"]["kernels"]
    assert kernels["gsplat"]["active"] == "torch" and "CPU build" in kernels["gsplat"]["why"]
    doc = subprocess.run([sys.executable, "-m", "milo_backend", "doctor", "--json"], capture_output=True,
                         text=True, timeout=600)
    report = json.loads(doc.stdout.splitlines()[-1])["outputs"]
    cpu = report["kernels"]["cpu"]
    assert cpu["renderer"] == "torch" and cpu["mesh_rasteriser"] == "torch"
    # the compiled CPU kernels where a C++ compiler is (this machine and CI have g++), else torch with why
    from milo_backend import cpu_kernels
    assert cpu["kernels"] == cpu_kernels.predict().active and "compiled kernels" in cpu["why"]
    assert report["renderer"] == "torch" and report["mesh_rasteriser"] == "torch"


def test_gsplat_available_on_a_cpu_machine_decides_at_once():
    import torch

    from milo_backend.render import gsplat_available
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert gsplat_available() is False and "gsplat" not in gk._ACTIVE
