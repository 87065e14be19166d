"""`ray job submit` for real: a 2-node local cluster started with `ray start`, the nightly
job submitted with the working directory, waited on, and its committed output checked.

Both nodes run `ray start --block` as child processes of the test, so stopping them stops
exactly this cluster (a plain `ray stop` would also stop the session's Ray).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import small_overrides
from raymedia import storage

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@pytest.fixture
def two_node_cluster():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")          # short: Ray's socket paths are limited
    gcs, dash = _free_port(), _free_port()
    # Ray 2.60 clusters use token auth; give every process of this cluster the same token.
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Not the RAY_* variables the session's own ray.init() left in this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_TRAIN_V2_ENABLED": "1",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    def common() -> list[str]:
        """Per-node flags; every port this node's agents open is a fresh one (the session's
        own Ray already holds the defaults, e.g. the dashboard agent's 52365)."""
        return ["--block", "--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    nodes = [subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={gcs}",
                               "--node-ip-address=127.0.0.1", "--include-dashboard=true",
                               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *common()],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    address = f"http://127.0.0.1:{dash}"

    def dashboard_up() -> bool:
        r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                           env=env, capture_output=True)
        return r.returncode == 0
    try:
        _wait_for(dashboard_up, 120, "head node's dashboard did not come up")
        nodes.append(subprocess.Popen([str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}",
                                       "--node-ip-address=127.0.0.1", *common()], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        yield {"address": address, "gcs": f"127.0.0.1:{gcs}", "env": env}
    finally:
        stop_nodes(nodes, temp)


def stop_nodes(nodes: list[subprocess.Popen], temp: str) -> None:
    """Stop `ray start --block` nodes (workers first; a node already gone is fine), SIGKILL
    any that have not exited after 10 s (a graceful stop took 34 s for the two nodes), and
    remove their temp dir. Each node is a session of its own, so the kill reaches exactly
    this cluster's processes."""
    for p in reversed(nodes):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in nodes:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def test_nightly_job_submitted_to_a_two_node_cluster(two_node_cluster, trained_run, tmp_path):
    c = two_node_cluster
    wait_for_nodes = ("import ray, sys, time; ray.init(address=sys.argv[1]); t = time.time()\n"
                      "while len([n for n in ray.nodes() if n['Alive']]) < 2 and time.time() - t < 120:\n"
                      "    time.sleep(0.5)\n"
                      "print(len([n for n in ray.nodes() if n['Alive']]))")
    status = subprocess.run([str(BIN / "python"), "-c", wait_for_nodes, c["gcs"]],
                            env=c["env"], capture_output=True, text=True, timeout=240)
    assert status.stdout.strip().splitlines()[-1] == "2", status.stderr[-2000:]

    out = str(tmp_path / "scores")
    sets = small_overrides(trained_run["root"], f"output.uri={out}",
                           f"output.models_uri={trained_run['cfg'].output.models_uri}",
                           "eval.enabled=false")
    day = str(trained_run["day"])
    submit = [str(BIN / "ray"), "job", "submit", "--address", c["address"], "--working-dir", str(ROOT),
              "--", "python", "jobs/nightly.py", "--date", day, "--no-train",
              *[a for s in sets for a in ("--set", s)]]
    for _ in range(30):     # the head's job agent starts a little after its dashboard
        r = subprocess.run(submit, env=c["env"], capture_output=True, text=True, timeout=600, cwd=ROOT)
        log = r.stdout + r.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(2)
    assert r.returncode == 0, log[-4000:]
    assert re.search(r"succeeded", log, re.I) and "stage score done" in log and "stage commit done" in log
    commit = storage.read_commit(out, day)
    recs = storage.read_committed(out, day, "recommendations")
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)) == commit.rows["recommendations"] > 1000
