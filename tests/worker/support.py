"""Helpers for the worker tests: a fake Discord REST API, real worker subprocesses, request payloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


class FakeDiscord:
    """POST /api/v10/channels/{id}/messages → a message id; every request is recorded. It knows no webhooks:
    a webhook it "creates" has no token, so scheduled posts go out as the bot."""

    def __init__(self):
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.posts.append({"path": self.path, "body": body, "auth": self.headers["Authorization"]})
                    message_id = 10**17 + len(fake.posts)
                data = json.dumps({"id": str(message_id), "content": body.get("content")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v10"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class WorkerProcess:
    """A real `celery -A worker.app worker` subprocess with the test environment."""

    def __init__(self, services, name: str, queue: str, pool: str, concurrency: int = 1,
                 **extra_env: str):
        self.hostname = f"{name}@test"
        self.log_path = services.logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, **services.env, **extra_env, "PYTHONUNBUFFERED": "1"}
        cmd = [CELERY, "-A", "worker.app", "worker", "-Q", queue, "--pool", pool, "-c", str(concurrency),
               "-n", self.hostname, "--without-gossip", "--without-mingle", "-l", "INFO"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        services.workers.append(self)

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        from worker.app import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.hostname} exited ({self.proc.returncode}):\n{self.log()}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return self
        raise TimeoutError(f"worker {self.hostname} not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """kill -9: no shutdown, no acknowledgements, no goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def generate_request(checkpoint_id: int, seed: int, max_tokens: int = 280, prompt: str = "Alice was", **extra):
    return {"checkpoint_id": checkpoint_id, "persona": "alice", "prompt": prompt,
            "params": {"max_tokens": max_tokens, "temperature": 0.8, "seed": seed},
            "guild_id": 1, "channel_id": 2, "user_id": 3, **extra}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
