"""`aiayn serve` in a child process on a free loopback port: for tests, benchmarks and scripts that
talk to a real server over HTTP.

    with ServerProcess("models/bible-es-en", threads=2) as server:
        urllib.request.urlopen(server.url + "/health")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start ``aiayn serve --model MODEL`` (plus ``args``) on 127.0.0.1; ready once /health answers.

    On exit it sends SIGTERM (a graceful stop: requests in flight are answered) and waits up to
    ``stop_timeout`` seconds before killing it.
    """

    def __init__(self, model: str | Path, threads: int = 1, args: list[str] | None = None,
                 start_timeout: float = 120.0, stop_timeout: float = 150.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "aiayn", "serve", "--model", str(model), "--port", str(self.port),
                    "--threads", str(threads), *(args or [])]
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        # The log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + self.start_timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError(f"aiayn serve exited ({self.proc.returncode}): "
                                       f"{self.log.read().decode(errors='replace')[-2000:]}") from None
                if time.time() > deadline:
                    self.proc.kill()
                    raise TimeoutError(f"aiayn serve did not answer within {self.start_timeout:g} s") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
