"""User-facing errors: a message that names the file, and a hint that names the fix.

Every failure a user can cause (bad folder, corrupt model, out of memory...) is raised as a
`MiloError`; the CLI turns it into one `error` event (and exit code 2) instead of a traceback.
"""
from __future__ import annotations

from pathlib import Path


class MiloError(Exception):
    """An error the user can act on."""

    def __init__(self, message: str, hint: str = "", path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = str(path) if path is not None else None

    def __str__(self) -> str:  # shown by the human-readable CLI
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


class Cancelled(Exception):
    """Raised inside long jobs when SIGINT/SIGTERM arrived; a checkpoint has been saved."""
