"""`doctor`: what this machine can run (Python, torch, CUDA, GPU, gsplat and nvdiffrast)."""
from __future__ import annotations

import importlib
import platform
import shutil
import sys

import torch

from milo_backend import gpu_kernels


def _module_status(name: str) -> dict:
    try:
        mod = importlib.import_module(name)
        return {"import": True, "version": getattr(mod, "__version__", None)}
    except Exception as exc:  # noqa: BLE001 - report, never crash
        return {"import": False, "error": f"{type(exc).__name__}: {exc}"}


def doctor(compile_extensions: bool = False) -> dict:
    cuda = torch.cuda.is_available()
    report = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
        "nvcc": shutil.which("nvcc"), "ninja": shutil.which("ninja"),
        "gpus": [{"name": torch.cuda.get_device_name(i),
                  "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                 for i in range(torch.cuda.device_count())] if cuda else [],
        "gsplat": _module_status("gsplat"), "nvdiffrast": _module_status("nvdiffrast.torch"),
        "pycolmap": _module_status("pycolmap"),
    }
    report["device"] = "cuda" if cuda else "cpu"
    report["kernels"] = kernel_report(compile_extensions)
    report["renderer"] = report["kernels"][report["device"]]["renderer"]
    report["mesh_rasteriser"] = report["kernels"][report["device"]]["mesh_rasteriser"]
    return report


def kernel_report(compile_extensions: bool = False, say=None) -> dict:
    """Per device: which Gaussian renderer and mesh rasteriser run, where their kernels come from, why.
    `compile_extensions` loads (or builds, saying so) the kernels instead of only predicting them."""
    from milo_backend import cpu_kernels
    facts = gpu_kernels.gather_facts()
    compiled = cpu_kernels.state(say) if compile_extensions else cpu_kernels.predict()
    cpu = {"renderer": "torch", "mesh_rasteriser": "torch", "kernels": compiled.active,
           "why": f"the CPU path is PyTorch with compiled kernels where they build; {compiled.why}"}
    if not facts.cuda:
        plan = gpu_kernels.plan_gsplat(facts)
        return {"cpu": cpu, "cuda": {"renderer": None, "mesh_rasteriser": None, "why": plan.why}}
    wheels = None if facts.gsplat_built else gpu_kernels.fetch_gsplat_wheels(facts, timeout_s=5.0)
    plans = [gpu_kernels.plan_gsplat(facts, wheels), gpu_kernels.plan_nvdiffrast(facts)]
    if compile_extensions:
        plans = [gpu_kernels.prepare(p, say) if say else gpu_kernels.prepare(p) for p in plans]
    gs, nv = plans
    # a JIT build runs at the first CUDA job (saying so); a prebuilt wheel waits for `setup-gpu`
    ready = {p.library: p.active if p.source in ("built", "jit build") else "torch" for p in plans}
    return {"cpu": cpu, "cuda": {"renderer": ready["gsplat"], "mesh_rasteriser": ready["nvdiffrast"],
                                 "gsplat": gs.to_json(), "nvdiffrast": nv.to_json()}}
