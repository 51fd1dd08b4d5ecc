"""A local `prefect server start` on 127.0.0.1 as a child process: start, wait until healthy, stop (tests, dev)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPrefectServer:
    """`prefect server start --host 127.0.0.1 --port N` with its own PREFECT_HOME (SQLite database)."""

    home: Path
    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        """Environment for a client of this server (a child process or `aeflow serve`)."""
        env = dict(os.environ)
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home))
        return env

    def start(self, timeout: float = 120.0) -> "LocalPrefectServer":
        """Start the server and block until /api/health answers (bounded by timeout)."""
        self.port = self.port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.home / "server.log"
        env = self.env()
        env.pop("PREFECT_API_URL")  # the server itself is not a client of anything
        env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false",
                   PREFECT_LOGGING_LEVEL="WARNING")
        prefect = Path(sys.executable).with_name("prefect")
        cmd = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            # Own session: stop() signals the whole group (uvicorn + its services), nothing else.
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        """Whether /api/health answers 200."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        """Poll /api/health until it answers; raise with the log tail if the server dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{self._tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s:\n{self._tail()}")

    def _tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
