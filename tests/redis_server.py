"""A real Redis on loopback for tests and benchmarks: Debian's `redis-server`.

Why real: the publisher's guarantees (pipelined writes, one atomic pointer switch
in a Lua script, expiry, AUTH) are Redis semantics; a fake would only repeat our
own assumptions. Installed by the project's set-up (`.ci/run`, README:
`apt-get install redis-server`).

The server listens on 127.0.0.1 on a random free port, requires a random
password, and keeps an append-only file in its own directory, so a server killed
and started again (same port, same directory) comes back with what it had
acknowledged, as a production Redis with AOF does.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0


class RedisServerError(RuntimeError):
    """redis-server is missing, did not become ready, or died."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    workdir: Path
    password: str = field(default_factory=lambda: "rmredis" + secrets.token_hex(12), repr=False)
    port: int = field(default_factory=_free_port)
    appendfsync: str = "always"     # tests: a kill loses nothing acknowledged; benchmarks: everysec
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL a user passes, password included (the publisher must never print it)."""
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    @property
    def url_without_password(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("no `redis-server` on PATH: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.write_text("\n".join([
            f"bind {HOST}", f"port {self.port}", f"dir {self.workdir}", "protected-mode yes",
            "appendonly yes", f"appendfsync {self.appendfsync}", "save \"\"", "daemonize no",
            f"logfile {self.workdir / 'redis.log'}", f"requirepass {self.password}", ""]))
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}; "
                                       f"log: {self.workdir / 'redis.log'}")
            try:
                if self.client().ping():
                    return
            except Exception:       # noqa: BLE001 - not up yet (connection refused, loading)
                time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server not ready after {READY_TIMEOUT_S:.0f}s")

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save (the AOF has every acknowledged write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self):
        import redis
        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=5)
