"""What an output folder holds: nothing, an interrupted run (checkpoint), or a finished one.

Starting a reconstruction into a folder that already holds a run must never overwrite it silently:
the panel offers Resume for an interrupted run and Import for a finished one. The file names are the
backend's own (`milo_backend.run_folder.RunFolder`).
"""
from __future__ import annotations

from pathlib import Path

from milo_backend.errors import MiloError
from milo_backend.run_folder import RunFolder

__all__ = ["RunFolder", "check_output_folder", "check_source"]


def check_output_folder(output: Path, resume: bool) -> None:
    """Refuse what would lose work or cannot work, with the fix in the hint."""
    if not str(output).strip() or str(output) == ".":
        raise MiloError("no output folder chosen", hint="choose where the result goes in the MILo panel")
    run = RunFolder(output)
    if output.exists() and not output.is_dir():
        raise MiloError(f"the output path {output} is a file, not a folder", hint="choose a folder", path=output)
    if resume and not run.holds_run:
        raise MiloError(f"nothing to resume in {output}: it holds no checkpoint",
                        hint="click Reconstruct to start a new run there", path=output)
    if not resume and run.resumable and not run.finished:
        raise MiloError(f"{output} already holds an interrupted run",
                        hint="click Resume to continue it, or choose another output folder", path=output)
    if not resume and run.finished:
        raise MiloError(f"{output} already holds a finished run",
                        hint="click Import Result to load it, or choose another output folder", path=output)


def check_source(source: Path) -> None:
    """Cheap checks before spawning anything; the backend reads and validates the dataset itself."""
    if not str(source).strip() or str(source) == ".":
        raise MiloError("no photos folder chosen", hint="choose the folder holding your photos (or a COLMAP / "
                        "transforms.json dataset) in the MILo panel")
    if not source.exists():
        raise MiloError(f"the photos folder {source} does not exist", hint="choose an existing folder", path=source)
    if source.is_file() and source.name != "transforms.json":
        raise MiloError(f"{source} is a file", hint="choose the folder that holds the photos", path=source)
