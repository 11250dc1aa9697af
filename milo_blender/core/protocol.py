"""Reading the backend's JSON-lines protocol (see milo_backend/events.py) into one job state.

Each line of the backend's stdout is one event; anything that is not a JSON object (a stray print, a
library warning) becomes a `log` event so nothing is lost and nothing crashes the reader.
The state is what the panel shows: stage, step/total, ETA, metrics, the latest preview, and at the end
either the outputs, or an error with its hint, or the checkpoint a cancelled run left behind.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Exit codes of the backend CLI (milo_backend/cli.py).
EXIT_OK, EXIT_INTERNAL, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 1, 2, 130

RUNNING, CANCELLING, DONE, FAILED, CANCELLED = "running", "cancelling", "done", "failed", "cancelled"


def parse_line(line: str) -> dict:
    """One line of output -> one event dict (non-JSON text becomes a `log` event)."""
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            return obj
    return {"event": "log", "message": text}


@dataclass
class JobState:
    status: str = RUNNING
    stage: str = ""
    stage_message: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)   # loss, psnr, gaussians ... of the last step
    preview: str | None = None                                # latest preview image path
    artifacts: dict[str, str] = field(default_factory=dict)   # kind -> latest path
    outputs: dict[str, Any] = field(default_factory=dict)     # the `done` event's outputs
    message: str = ""                                         # final error / cancel message
    hint: str = ""
    error_path: str | None = None
    checkpoint: str | None = None
    warnings: list[str] = field(default_factory=list)
    progress_events: int = 0
    returncode: int | None = None

    @property
    def finished(self) -> bool:
        """The process has ended (events may announce the outcome a moment before the exit)."""
        return self.returncode is not None

    @property
    def fraction(self) -> float:
        if self.status == DONE:
            return 1.0
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0


_PROGRESS_KEYS = ("event", "v", "time", "stage", "step", "total", "eta_s")


def apply_event(state: JobState, event: dict) -> None:
    """Fold one event into the state (events of unknown kinds are ignored: newer backends stay readable)."""
    kind = event.get("event")
    if kind == "stage":
        state.stage = str(event.get("stage", ""))
        state.stage_message = str(event.get("message") or state.stage)
        state.step, state.total, state.eta_s = 0, 0, None
    elif kind == "progress":
        state.stage = str(event.get("stage", state.stage))
        state.step = int(event.get("step") or 0)
        state.total = int(event.get("total") or 0)
        eta = event.get("eta_s")
        state.eta_s = float(eta) if isinstance(eta, (int, float)) else None
        state.metrics = {k: v for k, v in event.items() if k not in _PROGRESS_KEYS and isinstance(v, (int, float))}
        state.progress_events += 1
    elif kind == "artifact":
        kind_name, path = str(event.get("kind", "")), event.get("path")
        if path:
            state.artifacts[kind_name] = str(path)
            if kind_name == "preview":
                state.preview = str(path)
            elif kind_name == "checkpoint":
                state.checkpoint = str(path)
    elif kind == "warning":
        text = str(event.get("message", ""))
        if event.get("hint"):
            text += f" ({event['hint']})"
        state.warnings.append(text)
    elif kind == "error":
        state.status = FAILED
        state.message = str(event.get("message", "the backend reported an error"))
        state.hint = str(event.get("hint") or "")
        state.error_path = event.get("path")
    elif kind == "done":
        outputs = event.get("outputs")
        state.outputs = outputs if isinstance(outputs, dict) else {}
        if state.status != FAILED:
            state.status = DONE
    elif kind == "cancelled":
        state.status = CANCELLED
        state.message = str(event.get("message") or "stopped on request")
        state.hint = str(event.get("hint") or "")
        if event.get("checkpoint"):
            state.checkpoint = str(event["checkpoint"])


def finish(state: JobState, returncode: int, stderr_tail: str = "", cancel_requested: bool = False) -> None:
    """Settle the final status from the exit code once the process has ended.

    The events said what happened when the backend could say it; the exit code covers the rest: a crash
    (segfault, killed for memory, a Python error before the reporter existed) leaves no event behind.
    """
    state.returncode = returncode
    if returncode == EXIT_OK and state.status != FAILED:
        state.status = DONE
        return
    if state.status == FAILED and state.message:
        return
    if returncode == EXIT_CANCELLED or cancel_requested:
        state.status = CANCELLED
        state.message = state.message or "stopped on request"
        if not state.hint:
            state.hint = ("Resume continues from the saved checkpoint" if state.checkpoint
                          else "nothing was saved yet; start it again")
        return
    state.status = FAILED
    detail = last_meaningful_line(stderr_tail)
    if "No module named milo_backend" in stderr_tail or "No module named 'milo_backend'" in stderr_tail:
        state.message = "the MILo backend is not installed in the chosen Python environment"
        state.hint = "Preferences > Add-ons > MILo: click 'Set up backend', or choose a Python that has it"
        return
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    state.message = f"the backend stopped unexpectedly ({how})" + (f": {detail}" if detail else "")
    state.hint = ("see the log; Resume continues from the last checkpoint" if state.checkpoint
                  else "see the log for details")


def last_meaningful_line(text: str) -> str:
    """The last non-empty line of stderr (for a traceback: the exception line)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""
