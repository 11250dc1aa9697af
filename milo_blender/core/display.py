"""Short texts the panel shows for a job: the progress line, the ETA, the metrics, and quality presets."""
from __future__ import annotations

from milo_backend.config import BASE_ITERATIONS

from .protocol import CANCELLED, CANCELLING, DONE, FAILED, JobState

# Iteration budgets offered as "quality" (the backend scales its whole schedule to the budget).
QUALITY_ITERATIONS = {"DRAFT": 2_000, "STANDARD": 7_000, "FULL": BASE_ITERATIONS}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_text(state: JobState) -> str:
    """e.g. 'Training 120 / 2000 - 1 min 21 s left' (or the final outcome)."""
    if state.status == DONE:
        return "Finished"
    if state.status == FAILED:
        return "Failed"
    if state.status == CANCELLED:
        return "Stopped"
    label = state.stage_message or state.stage or "Starting"
    if state.status == CANCELLING:
        return f"Stopping (saving a checkpoint)... {label}"
    text = label
    if state.total > 0:
        text += f" {state.step} / {state.total}"
    if state.eta_s is not None:
        text += f" - {format_duration(state.eta_s)} left"
    return text


def metrics_text(state: JobState) -> str:
    parts = []
    m = state.metrics
    if "psnr" in m:
        parts.append(f"PSNR {m['psnr']:.2f} dB")
    if "loss" in m:
        parts.append(f"loss {m['loss']:.4f}")
    if "gaussians" in m:
        parts.append(f"{int(m['gaussians']):,} Gaussians")
    return ", ".join(parts)
