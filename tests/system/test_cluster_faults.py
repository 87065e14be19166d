"""What clusters do to a nightly job: a scoring actor dies, the object store goes away
for a while, a training worker dies. Each run still commits its day exactly once, with
the same rows an undisturbed run commits.

Processes are found by the title Ray gives them (``ray::<Actor>...``) and killed with
SIGKILL, as the kernel's OOM killer or a lost node would.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import small_config
from raymedia import pipeline, storage

FAST = ("eval.enabled=false",)
# Small batches and item chunks: many batches, so a fault lands in the middle of scoring.
# Many state partitions: the actor yields its output once per input block, so files appear
# while it still has blocks to score. Every run here (the reference included) scores with
# the same settings: the same float arithmetic, so "identical" means bit for bit.
SLOW_SCORING = ("score.batch_size=4", "score.rows_per_file=4", "score.item_chunk=16",
                "state.shuffle_partitions=32")


def _raylet_pid() -> int:
    import ray
    from ray._private import ray_constants
    node = ray._private.worker._global_node
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def ray_processes(marker: str) -> list[int]:
    """PIDs of the session's Ray worker processes whose title contains ``marker``
    (children of this session's raylet only: never another Ray on the machine)."""
    raylet, pids = _raylet_pid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cmd.startswith("ray::") and marker in cmd and ppid == raylet:
            pids.append(int(d.name))
    return pids


def wait_until(cond, what: str, timeout: float = 300, step: float = 0.05):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(step)


class Background:
    """Run a function in a thread; ``result()`` returns its value or raises its error."""

    def __init__(self, fn, *args, **kwargs):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self.value = fn(*args, **kwargs)
        except BaseException as exc:     # noqa: BLE001 - handed to the test
            self.error = exc

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout: float = 900):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def score(trained_run, out: str, *extra: str, root: str | None = None):
    cfg = small_config(root or trained_run["root"], f"output.uri={out}",
                       f"output.models_uri={trained_run['cfg'].output.models_uri}", *FAST, *extra)
    return cfg, lambda: pipeline.run_day(cfg, trained_run["day"], train_models=False,
                                         models=trained_run["result"].model_uris)


def rows_by_user(out: str, day) -> dict:
    recs = storage.read_committed(out, day, "recommendations")
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)), "a user appears twice"
    return dict(zip(users, zip(recs["items"].to_pylist(), recs["scores"].to_pylist())))


@pytest.fixture(scope="module")
def reference(trained_run, tmp_path_factory):
    """An undisturbed score-only run: what every disturbed run must commit."""
    out = str(tmp_path_factory.mktemp("reference") / "scores")
    _, run = score(trained_run, out, *SLOW_SCORING)
    run()
    return rows_by_user(out, trained_run["day"])


def kill_mid_scoring(pids: set[int], out: str, day, job: Background) -> int:
    """SIGKILL the scoring actor in the middle of the day's batches, after its first output
    files are written. Racing it is flaky (a fast actor can score every batch before the
    first write task has started), so it runs in short slices (SIGCONT, 0.1 s, SIGSTOP) and
    the writers catch up while it is stopped; it is killed stopped, with work left.
    Returns how many output files existed then."""
    def files() -> list[str]:
        return glob.glob(f"{out}/dt={day}/run=*/recommendations/*.parquet")
    deadline = time.time() + 300
    while True:
        assert job.running and all(Path(f"/proc/{pid}").exists() for pid in pids), \
            "scoring ended too soon"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(files, "", timeout=0.5, step=0.01)
            break
        except TimeoutError:
            pass
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        assert time.time() < deadline, "no scoring output appeared"     # (never leave it stopped)
        time.sleep(0.1)
    written = len(files())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return written


def test_a_killed_scoring_actor_is_restarted_and_its_batches_retried(trained_run, reference, tmp_path):
    out = str(tmp_path / "scores")
    _, run = score(trained_run, out, *SLOW_SCORING)
    # the reference run's actor may still be exiting: only this run's actor is to be killed
    wait_until(lambda: not ray_processes("Scorer"), "the reference run's scoring actor did not exit")
    job = Background(run)
    day = trained_run["day"]
    victims = wait_until(lambda: set(ray_processes("MapBatches(Scorer)")) or not job.running,
                         "the scoring actor did not start")
    assert job.running, "scoring ended before its actor was seen"
    written = kill_mid_scoring(victims, out, day, job)
    assert 0 < written < len(reference) // 4 // 2     # (files hold at most 4 users)
    job.result()
    assert not set(victims) & set(ray_processes("Scorer"))     # the actor that ran is gone
    commit = storage.read_commit(out, day)
    assert commit.generation == 1
    assert rows_by_user(out, day) == reference                # exactly once, identical rows
    assert glob.glob(f"{out}/dt={day}/run=*") == [f"{out}/dt={day}/run={commit.run_id}"]


@pytest.fixture(scope="module")
def s3_world(trained_run, s3):
    """The session's world copied to S3 (events and catalog)."""
    import pyarrow.fs as pafs
    base = "s3://raymedia/outage"
    fs, _ = storage.resolve(base)
    for sub in ("events", "catalog"):
        pafs.copy_files(f"{trained_run['root']}/{sub}", f"raymedia/outage/{sub}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return base


def start_scoring_on_s3(trained_run, s3_world: str, name: str) -> tuple[str, "Background"]:
    """A score-only run writing to ``s3_world/name`` in the background, returned once it has
    written its first object under the day (state, stats or outputs)."""
    import s3fs
    out = f"{s3_world}/{name}"
    _, run = score(trained_run, out, *SLOW_SCORING, root=s3_world)
    job = Background(run)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)

    def written() -> bool:
        try:
            return bool(fs.find(f"{out.removeprefix('s3://')}/dt={trained_run['day']}"))
        except Exception:            # noqa: BLE001 - the server may be going down
            return False
    wait_until(lambda: written() or not job.running, "no scoring output appeared on S3", step=0.2)
    return out, job


def runs_with_objects(day_prefix: str) -> set[str]:
    """Run ids with any object under the day. (Objects, not folder listings: SeaweedFS
    can keep an empty folder entry after every object under it is deleted, which S3
    itself has no notion of.)"""
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return {p.split("/run=", 1)[1].split("/", 1)[0] for p in fs.find(day_prefix) if "/run=" in p}


def test_s3_stopped_and_restarted_mid_write_the_run_retries_and_commits_exactly_once(
        trained_run, reference, s3, s3_world):
    out, job = start_scoring_on_s3(trained_run, s3_world, "scores-restart")
    day = trained_run["day"]
    assert job.running
    s3.stop(timeout=0)                      # a crash: connections refused from now on
    try:
        time.sleep(5)
    finally:
        s3.start()                          # back after a few seconds (plus its start-up)
    job.result()
    commit = storage.read_commit(out, day)
    assert commit.generation == 1
    assert rows_by_user(out, day) == reference
    assert runs_with_objects(f"raymedia/outage/scores-restart/dt={day}") == {commit.run_id}


@pytest.mark.slow
def test_s3_down_for_good_fails_clearly_commits_nothing_and_a_rerun_commits_once(
        trained_run, reference, s3, s3_world):
    out, job = start_scoring_on_s3(trained_run, s3_world, "scores-down")
    day = trained_run["day"]
    s3.stop(timeout=0)
    try:
        with pytest.raises(Exception) as e:
            job.result()
    finally:
        s3.start()
    assert "Could not connect to the endpoint URL" in str(e.value)
    assert storage.read_commit(out, day) is None              # nothing visible
    _, rerun = score(trained_run, out, *SLOW_SCORING, root=s3_world)
    result = rerun()
    assert rows_by_user(out, day) == reference
    assert runs_with_objects(f"raymedia/outage/scores-down/dt={day}") == {result.run_id}  # the failed run's are gone


@pytest.mark.slow
def test_a_killed_training_worker_resumes_from_its_checkpoint_and_reaches_the_same_quality(
        trained_run, tmp_path):
    """Two-tower training, 6 epochs; its worker is SIGKILLed once the first epoch's
    checkpoint is stored. Ray Train restarts the worker group (FailureConfig), the loop
    resumes after that epoch, and the model is as good as the undisturbed one."""
    models = str(tmp_path / "models")
    shutil.copytree(trained_run["cfg"].output.models_uri, models,
                    ignore=shutil.ignore_patterns("_ray_train"))
    out = str(tmp_path / "scores")
    cfg = small_config(trained_run["root"], f"output.uri={out}", f"output.models_uri={models}",
                       "train.models=two_tower")
    job = Background(pipeline.run_day, cfg, trained_run["day"])
    wait_until(lambda: glob.glob(f"{models}/_ray_train/two_tower-*/checkpoint_*") or not job.running,
               "no training checkpoint appeared", timeout=600, step=0.1)
    victims = ray_processes("RayTrainWorker")
    assert victims and job.running, "the training worker was not found while training"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    result = job.result()
    meta = storage.read_json(f"{result.model_uris['two_tower']}/model.json")
    epochs = [h["epoch"] for h in meta["history"]]
    assert len(epochs) >= 2 and epochs == list(range(len(epochs)))     # each epoch once, resumed
    k = cfg.eval.k
    got = result.metrics["models"]["two_tower"][f"ndcg@{k}"]
    undisturbed = trained_run["result"].metrics["models"]["two_tower"][f"ndcg@{k}"]
    popularity = result.metrics["models"]["popularity"][f"ndcg@{k}"]
    assert got > popularity and got >= 0.9 * undisturbed, (got, undisturbed, popularity)
    assert storage.read_commit(out, trained_run["day"]).generation == 1


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _usage() -> dict:
    """What a leak would grow: the driver's memory and open files, the cluster's live
    actors, and the memory of the session's worker processes."""
    import ray
    from ray.util.state import list_actors
    raylet = _raylet_pid()
    workers = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
               and _ppid(d) == raylet]
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                        limit=10_000, raise_on_missing_output=False)
    return {"driver_rss_mb": _rss_mb(os.getpid()), "open_files": len(os.listdir("/proc/self/fd")),
            "alive_actors": sorted(a.class_name for a in alive),
            "workers": len(workers), "workers_rss_mb": sum(_rss_mb(p) for p in workers)}


def _ppid(d: Path) -> int:
    try:
        return int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.slow
def test_ten_nightly_runs_leave_no_growth_in_memory_files_or_actors(trained_run, tmp_path):
    """Ten nightly score runs in a row (D, D+1, ...: day D rebuilds the user state, the
    others carry it forward) in one driver on the session's cluster."""
    import gc
    out = str(tmp_path / "scores")
    cfg, _ = score(trained_run, out)
    seen = []
    for i in range(10):
        day = trained_run["day"] + dt.timedelta(days=i)
        result = pipeline.run_day(cfg, day, train_models=False, models=trained_run["result"].model_uris)
        commit = storage.read_commit(out, day)
        assert commit.generation == 1 and commit.rows["recommendations"] == result.counts["users_scored"] > 0
        gc.collect()
        time.sleep(2)               # let Ray reap the run's actors before measuring
        seen.append(_usage())
    base, last = seen[2], seen[-1]            # after warm-up: imports, caches, worker pool
    assert last["alive_actors"] == base["alive_actors"], (base["alive_actors"], last["alive_actors"])
    assert last["open_files"] <= base["open_files"] + 5, [s["open_files"] for s in seen]
    assert last["driver_rss_mb"] <= base["driver_rss_mb"] + 150, [s["driver_rss_mb"] for s in seen]
    assert last["workers"] <= max(s["workers"] for s in seen[:3]) + 2, [s["workers"] for s in seen]
    assert last["workers_rss_mb"] <= base["workers_rss_mb"] * 1.3 + 200, [s["workers_rss_mb"] for s in seen]


# ------------------------------------------------------------------ a node goes away

def _children(pid: int) -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(d) == pid]


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in _children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def cluster_of_two(tmp_path):
    """A head and a worker node (`ray start --block`, children of the test, token auth,
    fresh ports), 2 CPUs each. Stopping the worker's `ray start` stops that node only."""
    import secrets
    import subprocess
    import sys
    import tempfile
    from test_job_submit import BIN, _free_port, _wait_for, stop_nodes
    temp = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    gcs = _free_port()
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_TRAIN_V2_ENABLED": "1",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})

    def start(*args) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "ray"), "start", *args, "--block", "--num-cpus=2",
                                 f"--temp-dir={temp}", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 f"--dashboard-agent-listen-port={_free_port()}",
                                 f"--dashboard-agent-grpc-port={_free_port()}",
                                 f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = [start("--head", f"--port={gcs}", "--include-dashboard=false")]
    alive = ("import ray, sys; ray.init(address=sys.argv[1]); "
             "print(len([n for n in ray.nodes() if n['Alive']]))")

    def count() -> int:
        r = subprocess.run([sys.executable, "-c", alive, f"127.0.0.1:{gcs}"], env=env,
                           capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else 0
    try:
        _wait_for(lambda: count() >= 1, 120, "head node did not come up")
        nodes.append(start(f"--address=127.0.0.1:{gcs}"))
        _wait_for(lambda: count() >= 2, 120, "worker node did not join")
        yield {"gcs": f"127.0.0.1:{gcs}", "env": env, "head": nodes[0], "worker": nodes[1]}
    finally:
        stop_nodes(nodes, temp)


@pytest.mark.slow
def test_a_worker_node_stopped_during_scoring_the_job_finishes_on_the_head(
        cluster_of_two, trained_run, reference, tmp_path):
    import subprocess
    import sys
    from conftest import small_overrides
    c = cluster_of_two
    models = str(tmp_path / "models")
    shutil.copytree(trained_run["cfg"].output.models_uri, models, ignore=shutil.ignore_patterns("_ray_train"))
    for kind, uri in trained_run["result"].model_uris.items():     # the reference's models
        storage.write_json(f"{models}/{kind}/LATEST.json", {"version": uri.rsplit("/", 1)[1]})
    out = str(tmp_path / "scores")
    day = trained_run["day"]
    sets = small_overrides(trained_run["root"], f"output.uri={out}", f"output.models_uri={models}",
                           f"ray.address={c['gcs']}", "score.concurrency=2", *FAST, *SLOW_SCORING)
    job = subprocess.Popen([sys.executable, "-m", "raymedia.cli", "score", "--date", str(day),
                            *[a for s in sets for a in ("--set", s)]], env=c["env"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=Path(__file__).resolve().parents[2])

    def scorer_on_worker() -> list[int]:
        return [p for p in _descendants(c["worker"].pid) if "MapBatches(Scorer)" in _title(p)]
    victims = wait_until(lambda: scorer_on_worker() or job.poll() is not None,
                         "no scoring actor started on the worker node", timeout=600, step=0.2)
    wait_until(lambda: glob.glob(f"{out}/dt={day}/run=*/recommendations/*.parquet") or job.poll() is not None,
               "no scoring output appeared", timeout=600)
    assert job.poll() is None and victims, "scoring ended before the node could be stopped"
    os.killpg(c["worker"].pid, signal.SIGTERM)          # `ray stop` for that node only
    c["worker"].wait(timeout=120)
    log, _ = job.communicate(timeout=900)
    assert job.returncode == 0, log[-4000:]
    commit = storage.read_commit(out, day)
    assert commit.generation == 1
    assert rows_by_user(out, day) == reference
    assert glob.glob(f"{out}/dt={day}/run=*") == [f"{out}/dt={day}/run={commit.run_id}"]
