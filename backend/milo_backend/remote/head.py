"""A Ray head on this computer's loopback interface, for the tests and the benchmarks: `ray start --head
--block` on free ports with its own temporary folder, stopped (with its workers) when the block ends."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_head(num_cpus: int = 2, start_timeout: float = 300) -> Iterator[str]:
    """Yields the head's Ray Client address, ray://127.0.0.1:PORT."""
    temp = tempfile.mkdtemp(prefix="mray", dir="/tmp" if os.path.isdir("/tmp") else None)  # short socket paths
    gcs, client = free_port(), free_port()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--ray-client-server-port",
                             str(client), "--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard",
                             "false", "--disable-usage-stats", "--temp-dir", temp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", client), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not start: {head.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield f"ray://127.0.0.1:{client}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a clean stop takes half a minute here: the rest is not needed
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # and whatever of the group is left (workers)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)
