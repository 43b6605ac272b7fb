"""`nextclick worker` as a child process (the tests' and benchmarks' workers): its own data folder,
metrics port and topics, ready once Faust says so, stopped with everything it started."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from stream.kafka.broker import free_port
from stream.metrics import scrape
from stream.processes import Child
from stream.settings import Topics


class WorkerProcess(Child):
    """`nextclick worker` as a child process, with its own data dir and metrics port."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        checkpoint: Path | None,
        workdir: Path,
        registry: Path | None = None,
        command: list[str] | None = None,
        **env: str,
    ) -> None:
        """`command` replaces `nextclick worker` (a benchmark's bare Faust agent)."""
        self.metrics_port = free_port()
        log = workdir / f"worker-{self.metrics_port}.log"
        full_env = {
            **os.environ,
            **topics.env(),
            "KAFKA_BOOTSTRAP": bootstrap,
            "NEXTCLICK_DATA_DIR": str(workdir / f"data-{self.metrics_port}"),
            "NEXTCLICK_METRICS_PORT": str(self.metrics_port),
            "NEXTCLICK_EXPIRY_INTERVAL": "1",
            **env,
        }
        model = ["--registry", str(registry)] if registry else ["--checkpoint", str(checkpoint)]
        argv = [*(command or [sys.executable, "-m", "stream.cli", "worker", *model]), "--loglevel", "info"]
        super().__init__("worker", argv, full_env, log)

    def metric(self, name: str) -> float:
        """One metric summed over its label sets (0 while the endpoint is not up)."""
        return scrape(self.metrics_port).get(name, 0.0)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready = the worker serves metrics and has been assigned partitions (its consumer is running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_tail()}")
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "Worker: Ready" in text or "[^Worker]: Ready" in text:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        super().stop(sig, timeout)
