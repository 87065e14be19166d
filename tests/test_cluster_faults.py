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

import pyarrow.compute as pc
import pytest

from conftest import small_config
from raymedia import pipeline, storage

FAST = ("eval.enabled=false",)
# Small batches and item chunks: many batches, so a fault lands in the middle of scoring.
# Every run here (the reference included) scores with the same settings: the same
# float arithmetic, so "identical" means bit for bit.
SLOW_SCORING = ("score.batch_size=16", "score.rows_per_file=16", "score.item_chunk=16")


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


def test_a_killed_scoring_actor_is_restarted_and_its_batches_retried(trained_run, reference, tmp_path):
    out = str(tmp_path / "scores")
    _, run = score(trained_run, out, *SLOW_SCORING)
    job = Background(run)
    day = trained_run["day"]
    # kill the actor once it has produced output, i.e. in the middle of the day's batches
    victims = wait_until(lambda: ray_processes("MapBatches(Scorer)") or not job.running,
                         "the scoring actor did not start")
    wait_until(lambda: glob.glob(f"{out}/dt={day}/run=*/recommendations/*.parquet") or not job.running,
               "no scoring output appeared")
    assert job.running and victims == ray_processes("MapBatches(Scorer)"), "scoring ended too soon"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
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


def _first_s3_output(s3fs_fs, prefix: str) -> bool:
    """True once the run has written anything under its day (state, stats, outputs)."""
    try:
        return bool(s3fs_fs.find(prefix))
    except Exception:            # noqa: BLE001 - the server may be going down
        return False


def test_s3_stopped_and_restarted_mid_write_the_run_retries_and_commits_exactly_once(
        trained_run, reference, s3, s3_world):
    import s3fs
    out = f"{s3_world}/scores-restart"
    day = trained_run["day"]
    _, run = score(trained_run, out, *SLOW_SCORING, root=s3_world)
    job = Background(run)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    wait_until(lambda: _first_s3_output(fs, f"raymedia/outage/scores-restart/dt={day}") or not job.running,
               "no scoring output appeared on S3", step=0.2)
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
    assert [p.rsplit("/", 1)[1] for p in fs.ls(f"raymedia/outage/scores-restart/dt={day}")
            if "run=" in p] == [f"run={commit.run_id}"]


@pytest.mark.slow
def test_s3_down_for_good_fails_clearly_commits_nothing_and_a_rerun_commits_once(
        trained_run, reference, s3, s3_world):
    import s3fs
    out = f"{s3_world}/scores-down"
    day = trained_run["day"]
    _, run = score(trained_run, out, *SLOW_SCORING, root=s3_world)
    job = Background(run)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    wait_until(lambda: _first_s3_output(fs, f"raymedia/outage/scores-down/dt={day}") or not job.running,
               "no scoring output appeared on S3", step=0.2)
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
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert [p.rsplit("/", 1)[1] for p in fs.ls(f"raymedia/outage/scores-down/dt={day}")
            if "run=" in p] == [f"run={result.run_id}"]       # the failed run's files are gone


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
    assert [h["epoch"] for h in meta["history"]] == list(range(cfg.train.epochs))   # each epoch once
    k = cfg.eval.k
    got = result.metrics["models"]["two_tower"][f"ndcg@{k}"]
    undisturbed = trained_run["result"].metrics["models"]["two_tower"][f"ndcg@{k}"]
    popularity = result.metrics["models"]["popularity"][f"ndcg@{k}"]
    assert got > popularity and got >= 0.9 * undisturbed, (got, undisturbed, popularity)
    assert storage.read_commit(out, trained_run["day"]).generation == 1
