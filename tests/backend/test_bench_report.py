"""What the benchmarks report about a run: time per stage from its events."""
from __future__ import annotations

import pytest

from milo_backend.bench.mesh_loop import stage_seconds


def test_stage_seconds_split_a_run_at_its_stage_events():
    """Each stage lasts until the next stage event (the last one until the run's last event), SfM's
    sub-stages count as one `sfm` stage, and progress events in between do not cut a stage."""
    def stage(name, t):
        return {"event": "stage", "stage": name, "time": t}

    events = [stage("load", 0.0), stage("sfm:features", 1.0), {"event": "progress", "stage": "sfm", "time": 5.0},
              stage("sfm:matching", 11.0), stage("sfm:mapping", 15.0), stage("train", 20.0), stage("mesh", 80.0),
              stage("extract", 200.0), {"event": "artifact", "time": 230.5}]
    seconds = stage_seconds(events)
    assert list(seconds) == ["load", "sfm", "train", "mesh", "extract"]
    assert seconds == pytest.approx({"load": 1.0, "sfm": 19.0, "train": 60.0, "mesh": 120.0, "extract": 30.5})
    assert sum(seconds.values()) == pytest.approx(events[-1]["time"] - events[0]["time"])
    assert stage_seconds([]) == {}
