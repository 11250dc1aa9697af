"""Shared fixtures: a tiny synthetic scene (generated once per session) and a CLI runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from milo_backend.data.synthetic import make_synthetic_scene


@pytest.fixture
def one_thread():
    """Tests of many tiny tensor ops: a second intra-op thread only adds contention on a shared machine.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["torch", "compiled"])
def cpu_kernels(request, monkeypatch):
    """Run a test with the torch references and with the compiled CPU kernels (skipped, with the reason,
    where this machine cannot build them)."""
    from milo_backend import cpu_kernels as kernels

    if request.param == "compiled" and not kernels.available():
        pytest.skip(kernels.state().why)
    monkeypatch.setattr(kernels, "_FORCE_TORCH", request.param == "torch")
    return request.param


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """16 views of 48x48 pixels with a test split (every 8th view), transforms.json + images/."""
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "tiny scène", n_views=16, size=48)


class Cli:
    """Fixture helpers: `cli.run(...)` and `cli.parse(...)`."""

    @staticmethod
    def parse(stdout: str) -> list[dict]:
        return parse_events(stdout)

    @staticmethod
    def run(*args, **kwargs):
        return run_cli(*args, **kwargs)


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line of a --json run must be one JSON object with an "event"."""
    events = []
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"stdout line is not a JSON event: {line!r}") from None
        assert "event" in obj and obj["v"] == 1, line
        events.append(obj)
    return events


def run_cli(*args, timeout: float = 600, check_json: bool = True,
            env: dict | None = None) -> tuple[int, list[dict], str]:
    """Run `python -m milo_backend ARGS --json` (with `env` added to the environment); returns (exit code,
    events, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "milo_backend", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return proc.returncode, parse_events(proc.stdout) if check_json else [], proc.stderr
