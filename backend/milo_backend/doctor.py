"""`doctor`: what this machine can run (Python, torch, CUDA, GPU, gsplat and nvdiffrast)."""
from __future__ import annotations

import importlib
import platform
import shutil
import sys

import torch


def _module_status(name: str) -> dict:
    try:
        mod = importlib.import_module(name)
        return {"import": True, "version": getattr(mod, "__version__", None)}
    except Exception as exc:  # noqa: BLE001 - report, never crash
        return {"import": False, "error": f"{type(exc).__name__}: {exc}"}


def _compile_status(check) -> dict:
    try:
        check()
        return {"compiled": True}
    except Exception as exc:  # noqa: BLE001
        return {"compiled": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def _gsplat_kernels() -> None:
    from gsplat.cuda._backend import _C
    if _C is None:
        raise RuntimeError("gsplat CUDA kernels unavailable")


def _nvdiffrast_kernels() -> None:
    import nvdiffrast.torch as dr
    dr.RasterizeCudaContext()


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
    if compile_extensions and cuda:
        report["gsplat"].update(_compile_status(_gsplat_kernels))
        report["nvdiffrast"].update(_compile_status(_nvdiffrast_kernels))
    report["device"] = "cuda" if cuda else "cpu"
    report["renderer"] = "gsplat" if cuda and report["gsplat"].get("compiled", report["gsplat"]["import"]) else "torch"
    return report
