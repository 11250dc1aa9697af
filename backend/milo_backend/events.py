"""The JSON-lines event protocol (what the Blender extension reads) and progress reporting.

With `--json` every event is one JSON object on one line of stdout. Without it, a human-readable
rendering goes to stderr with tqdm progress bars. Every event is also appended to `OUT/log.jsonl`
when a log file is attached. Protocol (version 1), every object has "event", "v" and "time":

  {"event": "stage",    "stage": "sfm", "message": "Structure from motion"}
  {"event": "progress", "stage": "train", "step": 120, "total": 2000, "eta_s": 81.5,
                         "loss": 0.071, "psnr": 23.4}            # extra numeric fields allowed
  {"event": "artifact", "kind": "gaussians", "path": "/abs/out/gaussians.ply"}
  {"event": "warning",  "message": "...", "hint": "..."}
  {"event": "error",    "message": "...", "hint": "...", "path": "/file/at/fault"}
  {"event": "done",     "outputs": {"gaussians": "/abs/...", ...}}
  {"event": "cancelled", "message": "...", "checkpoint": "/abs/out/checkpoints/latest.pt", "hint": "..."}
  {"event": "log",      "message": "..."}
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

PROTOCOL_VERSION = 1


class EtaEstimator:
    """ETA from an exponential moving average of seconds per step (robust to a slow first step)."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None  # seconds per step

    def update(self, step: int, total: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        if self._last is not None and step > self._last[1]:
            rate = (now - self._last[0]) / (step - self._last[1])
            self._rate = rate if self._rate is None else (1 - self.smoothing) * self._rate + self.smoothing * rate
        if self._last is None or step != self._last[1]:
            self._last = (now, step)
        if self._rate is None:
            return None
        return max(0.0, (total - step) * self._rate)


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN/inf become None, paths become strings, numpy/torch scalars floats."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reporter:
    """Sends events to stdout (JSON or human) and to an optional log file."""

    def __init__(self, json_mode: bool = False, stream: TextIO | None = None, quiet: bool = False):
        self.json_mode = json_mode
        self.stream = stream if stream is not None else (sys.stdout if json_mode else sys.stderr)
        self.quiet = quiet
        self._log: TextIO | None = None
        self._bars: dict[str, Any] = {}
        self._progress_since: dict[str, float] = {}  # stage -> time of its first progress event
        self._etas: dict[str, EtaEstimator] = {}
        self._caller_gone = False

    # -- sinks -------------------------------------------------------------------------------
    def attach_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(path, "a", encoding="utf-8")

    def _drop_log(self) -> None:
        log, self._log = self._log, None
        with contextlib.suppress(OSError):
            log.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        if self._log is not None:
            self._drop_log()

    def emit(self, event: str, **fields: Any) -> dict:
        obj = {"event": event, "v": PROTOCOL_VERSION, "time": round(time.time(), 3), **_clean(fields)}
        line = json.dumps(obj, ensure_ascii=False)
        if self._log is not None:
            try:
                self._log.write(line + "\n")
                self._log.flush()
            except OSError:  # a full disk: the events still reach the caller, who is told why
                self._drop_log()
        if self._caller_gone:
            return obj
        try:
            if self.json_mode:
                self.stream.write(line + "\n")
                self.stream.flush()
            elif not self.quiet:
                self._human(obj)
        except (BrokenPipeError, ConnectionResetError):
            self._on_caller_gone()
        return obj

    def _on_caller_gone(self) -> None:
        """Whoever reads the events has gone (Blender quit or was killed): stop as on Ctrl-C, so that a
        running training saves a checkpoint and exits instead of working on as an orphan."""
        self._caller_gone = True
        self.emit("log", message="the event stream was closed by its reader: stopping")  # to the log file only
        signal.raise_signal(signal.SIGTERM)

    def _human(self, obj: dict) -> None:
        kind = obj["event"]
        if kind == "progress":
            self._bar(obj)
            return
        self._close_bars()
        if kind == "stage":
            self._progress_since.pop(obj.get("stage"), None)
            text = f"== {obj.get('message') or obj.get('stage')}"
        elif kind == "artifact":
            text = f"   wrote {obj.get('kind')}: {obj.get('path')}"
        elif kind in ("warning", "error"):
            text = f"{kind.upper()}: {obj.get('message')}"
            if obj.get("hint"):
                text += f"\n  hint: {obj['hint']}"
        elif kind == "done":
            text = "done."
        else:
            text = str(obj.get("message", ""))
        print(text, file=self.stream, flush=True)

    def _bar(self, obj: dict) -> None:
        from tqdm import tqdm

        stage = obj.get("stage", "")
        bar = self._bars.get(stage)
        if bar is None:
            self._close_bars()
            # the remaining time shown is the event's own ETA (the panel shows the same), not tqdm's,
            # which knows nothing of steps reported out of its update()
            bar = self._bars[stage] = tqdm(total=obj.get("total"), desc=stage, file=self.stream,
                                           dynamic_ncols=True, leave=True, initial=obj.get("step", 0),
                                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                      "[{elapsed}{postfix}]")
            # a bar re-opened after a line of text (preview written, nested stage) keeps counting the
            # stage's elapsed time from its first progress event, not from zero
            bar.start_t = self._progress_since.setdefault(stage, bar.start_t)
        bar.n = obj.get("step", 0)
        eta = obj.get("eta_s")
        post = [f"ETA {tqdm.format_interval(eta) if eta is not None else '?'}"]
        post += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in obj.items()
                 if k not in ("event", "v", "time", "stage", "step", "total", "eta_s")]
        bar.set_postfix_str(", ".join(post), refresh=False)  # tqdm puts ", " in front
        bar.refresh()

    def _close_bars(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    # -- event helpers -----------------------------------------------------------------------
    def stage(self, stage: str, message: str = "") -> None:
        self._etas[stage] = EtaEstimator()
        self.emit("stage", stage=stage, message=message or stage)

    def progress(self, stage: str, step: int, total: int, **metrics: Any) -> None:
        eta = self._etas.setdefault(stage, EtaEstimator()).update(step, total)
        self.emit("progress", stage=stage, step=step, total=total, eta_s=eta, **metrics)

    def artifact(self, kind: str, path: Path | str) -> None:
        self.emit("artifact", kind=kind, path=str(Path(path).resolve()))

    def warning(self, message: str, hint: str = "") -> None:
        self.emit("warning", message=message, hint=hint)

    def error(self, message: str, hint: str = "", path: str | None = None) -> None:
        self.emit("error", message=message, hint=hint, path=path)

    def log(self, message: str) -> None:
        self.emit("log", message=message)

    def done(self, **outputs: Any) -> None:
        self.emit("done", outputs=outputs)


class NullReporter(Reporter):
    """Reporter for library use and tests: records events in memory, prints nothing."""

    def __init__(self):
        super().__init__(json_mode=False, quiet=True)
        self.events: list[dict] = []

    def emit(self, event: str, **fields: Any) -> dict:
        obj = super().emit(event, **fields)
        self.events.append(obj)
        return obj

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]
