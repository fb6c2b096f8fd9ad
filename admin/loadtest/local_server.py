"""`faqbot serve` as a child process on a free loopback port, for the commands that measure a server (bench, soak)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from index.datadir import DataDir


@contextlib.contextmanager
def faqbot_server(kb: Path, data_dir: Path, env: dict[str, str], workers: int = 1, ready_seconds: float = 600.0,
                  models_dir: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`faqbot serve` on a free loopback port with `env` on top of ours; stopped on exit.

    `models_dir`: the configured data dir's models, linked into a fresh `data_dir`, so the server
    serves what the configured one would (auto's ONNX export, a deployed model) without exporting
    again into every throwaway data dir.
    """
    import socket

    import httpx

    linked = DataDir(data_dir).models
    if models_dir is not None and Path(models_dir).is_dir() and not linked.exists():
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        linked.symlink_to(Path(models_dir).resolve(), target_is_directory=True)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 - read on failure
    proc = subprocess.Popen(
        [sys.executable, "-m", "admin.cli", "serve", "--kb", str(kb), "--data-dir", str(data_dir),
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        # Every bench client is 127.0.0.1: per-client rate limits would measure the limiter, not the server.
        env={**os.environ, "FAQBOT_LOG_LEVEL": "warning", "FAQBOT_RATE_LIMIT_ENABLED": "false", **env},
        stdout=log, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"faqbot serve did not become ready:\n{log.read()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        os.unlink(log.name)
