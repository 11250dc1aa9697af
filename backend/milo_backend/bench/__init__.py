"""Benchmarks. Each module here measures one area and returns a markdown section; `write_section`
replaces that section of BENCHMARKS.md (between `<!-- bench:NAME -->` markers), so areas can be
re-measured independently without touching the others' figures.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import resource
from pathlib import Path

import torch

from milo_backend.atomic import atomic_path

HEADER = "# Benchmarks\n\nWritten by `milo-backend bench`; each section says when, where and how it was measured.\n"


def shared_data(*parts: str) -> Path:
    """A file of the project's read-only sample data: `MILO_SHARED_DATA`, else `shared/data` beside the
    repository or inside it; the first candidate when none has it, so errors name the expected place."""
    repository = Path(__file__).resolve().parents[3]
    roots = [Path(os.environ["MILO_SHARED_DATA"])] if os.environ.get("MILO_SHARED_DATA") else []
    roots += [repository.parent / "shared" / "data", repository / "shared" / "data"]
    for root in roots:
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    return roots[0].joinpath(*parts)


def machine_description(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    import os
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def section_header(title: str, command: str, device: str = "cpu") -> str:
    today = datetime.date.today().isoformat()
    return f"## {title}\n\n{today} · {machine_description(device)} · `{command}`\n\n"


def peak_memory(device: str = "cpu") -> dict:
    """Table cells, in GiB: the peak resident memory of this process so far, and on CUDA the peak GPU
    memory torch allocated since the last `torch.cuda.reset_peak_memory_stats()` ("-" elsewhere)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    gpu = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device.startswith("cuda") else "-"
    return {"peak RSS GB": rss, "peak GPU GB": gpu}


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0].keys())
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_section(name: str, markdown: str, path: str | Path = "BENCHMARKS.md") -> Path:
    """Insert or replace the section `name` of the benchmarks file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{markdown.rstrip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
