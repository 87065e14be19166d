"""`raymedia publish` against a real Redis (Debian's redis-server on loopback, random port,
required password): every user read back as a reader would, the atomic switch, expiry,
--force, a Redis killed mid-publish, two publishers at once, and no password anywhere."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymedia import cli, publish, storage
from redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def target(server: RedisServer, prefix: str) -> publish.Target:
    return publish.parse_target(server.url, prefix)


def read_user(client, prefix: str, user: int) -> dict | None:
    """What a reader does (README "Publishing to Redis"): resolve the pointer, then GET."""
    live = client.get(f"{prefix}:live")
    raw = client.get(f"{prefix}:{live.decode()}:{user}") if live else None
    return json.loads(raw) if raw else None


def committed(root: str, day) -> tuple[pa.Table, pa.Table]:
    return (storage.read_committed(root, day, "recommendations"),
            storage.read_committed(root, day, "predictions"))


def commit_copy(trained_run, root: str, day: dt.date, copies: int = 1) -> storage.Commit:
    """Commit the trained run's recommendations and predictions as day ``day`` under ``root``
    (``copies`` times, user ids shifted per copy): a real committed day without training."""
    recs, preds = committed(trained_run["cfg"].output.uri, trained_run["day"])
    shift = int(pc.max(recs["user_id"]).as_py()) + 1
    tile = lambda t: pa.concat_tables([    # noqa: E731
        t.set_column(0, "user_id", pc.add(t["user_id"], pa.scalar(k * shift, t["user_id"].type)))
        for k in range(copies)])
    run_id = storage.new_run_id()
    run = storage.run_path(root, day, run_id)
    files = {}
    for name, table in (("recommendations", tile(recs)), ("predictions", tile(preds))):
        storage.makedirs(storage.join(run, name))
        pq.write_table(table, storage.join(run, name, "part-0.parquet"))
        files[name] = [f"run={run_id}/{name}/part-0.parquet"]
    c = storage.Commit(dt=day.isoformat(), run_id=run_id, files=files,
                       rows={"recommendations": recs.num_rows * copies, "predictions": preds.num_rows * copies}, model_versions={},
                       input_partitions=[], config_hash="test", created_at="2026-01-01T00:00:00+00:00")
    storage.commit(root, c, storage.generation(root, day))
    return storage.read_commit(root, day)


def assert_every_user_readable(client, prefix: str, root: str, day) -> None:
    recs, preds = committed(root, day)
    p = {r["user_id"]: r for r in preds.to_pylist()}
    live = client.get(f"{prefix}:live").decode()
    assert sum(1 for _ in client.scan_iter(f"{prefix}:{live}:*", count=5000)) == recs.num_rows
    for r in recs.to_pylist():
        v = read_user(client, prefix, r["user_id"])
        assert v is not None, f"user {r['user_id']} missing from {live}"
        assert v["items"] == r["items"] and v["scores"] == pytest.approx(r["scores"], rel=1e-6)
        assert v["model_version"] == r["model_version"] and v["dt"] == storage.day(day)
        assert v["generated_at"] == r["generated_at"].isoformat()
        want = {k: x for k, x in p[r["user_id"]].items() if k not in ("user_id", "model_version")}
        assert v["predictions"] == pytest.approx(want)


def test_publish_reads_back_every_user_and_republishing_is_a_no_op(trained_run, redis_server):
    root, day = trained_run["cfg"].output.uri, trained_run["day"]
    t = target(redis_server, "t1")
    r = publish.publish(root, day, t)
    c = storage.read_commit(root, day)
    assert (r.status, r.version, r.live) == ("switched", f"v{c.dt}-{c.generation}", r.version)
    client = redis_server.client()
    assert r.users == c.rows["recommendations"] > 1000
    assert_every_user_readable(client, "t1", root, day)
    assert client.ttl(f"t1:{r.version}:{committed(root, day)[0]['user_id'][0]}") == -1   # live: no expiry
    manifest = json.loads(client.hget("t1:versions", r.version))
    assert manifest["complete"] and manifest["run_id"] == c.run_id
    # the same commit again writes nothing: a key changed by hand stays changed
    some = f"t1:{r.version}:{committed(root, day)[0]['user_id'][0]}"
    client.set(some, b"marker")
    assert publish.publish(root, day, t).status == "unchanged"
    assert client.get(some) == b"marker"


def test_only_committed_days_and_older_days_need_force_and_old_versions_expire(
        trained_run, redis_server, tmp_path):
    root, day = str(tmp_path / "scores"), trained_run["day"]
    t = target(redis_server, "t2")
    with pytest.raises(publish.NotCommitted, match=f"dt={day} is not committed"):
        publish.publish(root, day, t)
    commit_copy(trained_run, root, day)
    later = day + dt.timedelta(days=1)
    commit_copy(trained_run, root, later)
    assert publish.publish(root, day, t).live == f"v{day}-1"
    r = publish.publish(root, later, t, keep_days=3)
    assert r.retired == (f"v{day}-1",)
    client = redis_server.client()
    old_key = next(client.scan_iter(f"t2:v{day}-1:*"))
    assert 3 * 86400 - 60 < client.ttl(old_key) <= 3 * 86400      # replaced: expires in 3 days
    with pytest.raises(publish.OlderThanLive, match=f"older than the live v{later}-1.*--force"):
        publish.publish(root, day, t)
    assert client.get("t2:live").decode() == f"v{later}-1"
    r = publish.publish(root, day, t, force=True, keep_days=0)
    assert (r.status, r.live, r.retired) == ("switched", f"v{day}-1", (f"v{later}-1",))
    assert client.ttl(old_key) == -1                 # re-written: no longer expiring
    assert not list(client.scan_iter(f"t2:v{later}-1:*"))     # keep_days=0: gone at once
    assert_every_user_readable(client, "t2", root, day)
    # the day run again (generation 2) replaces generation 1 without --force
    commit_copy(trained_run, root, day)
    assert publish.publish(root, day, t).live == f"v{day}-2"


def test_redis_killed_mid_publish_leaves_readers_on_the_previous_version_and_a_rerun_completes(
        trained_run, redis_server, tmp_path):
    root, day = str(tmp_path / "scores"), trained_run["day"]
    t = target(redis_server, "t3")
    commit_copy(trained_run, root, day)
    assert publish.publish(root, day, t).live == f"v{day}-1"
    commit_copy(trained_run, root, day, copies=60)        # generation 2: ~70,000 users
    failure: list[BaseException] = []

    def run():
        try:
            publish.publish(root, day, t, batch_users=500, pipeline_depth=50)
        except BaseException as exc:     # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    publisher = threading.Thread(target=run)
    publisher.start()
    client = redis_server.client()
    deadline = time.monotonic() + 120
    while not any(True for _ in client.scan_iter(f"t3:v{day}-2:*", count=1000)):
        assert time.monotonic() < deadline and publisher.is_alive(), "the publish never started writing"
        time.sleep(0.02)
    redis_server.kill()
    publisher.join(180)
    assert not publisher.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], publish.PublishError), failure
    assert f"readers stay on v{day}-1" in str(failure[0])
    redis_server.start()
    client = redis_server.client()
    partial = sum(1 for _ in client.scan_iter(f"t3:v{day}-2:*", count=5000))
    assert 0 < partial < storage.read_commit(root, day).rows["recommendations"]
    assert client.get("t3:live").decode() == f"v{day}-1"
    first = storage.read_commit(root, day)
    r = publish.publish(root, day, t)
    assert (r.status, r.live, r.users) == ("switched", f"v{day}-2", first.rows["recommendations"])
    assert_every_user_readable(client, "t3", root, day)


def test_two_publishers_of_the_same_day_at_once(trained_run, redis_server):
    root, day = trained_run["cfg"].output.uri, trained_run["day"]
    t = target(redis_server, "t4")
    results, errors = [], []

    def run():
        try:
            results.append(publish.publish(root, day, t))
        except BaseException as exc:     # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors
    assert {r.live for r in results} == {f"v{day}-{storage.read_commit(root, day).generation}"}
    assert "switched" in {r.status for r in results}     # one switched; the other found it live
    client = redis_server.client()
    assert_every_user_readable(client, "t4", root, day)
    assert client.hlen("t4:versions") == 1
    assert json.loads(client.hget("t4:versions", results[0].live))["complete"]


def _run_cli(capsys, caplog, *argv) -> tuple[int, str]:
    with caplog.at_level(logging.DEBUG):
        code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


def test_the_password_appears_in_no_output_log_or_error(trained_run, redis_server, capsys, caplog,
                                                         monkeypatch):
    import ray
    root, day = trained_run["cfg"].output.uri, trained_run["day"]
    common = ["--date", str(day), "--set", f"output.uri={root}", "--prefix", "t5"]
    code, text = _run_cli(capsys, caplog, "publish", "--to", redis_server.url, *common)
    assert code == 0 and f"published dt={day} as t5:v{day}-" in text
    monkeypatch.setenv("REDIS_PASSWORD", redis_server.password)      # the client's other source
    code, more = _run_cli(capsys, caplog, "publish", "--to", redis_server.url_without_password, *common)
    assert code == 0 and "already live" in more
    text += more
    monkeypatch.setenv("REDIS_PASSWORD", "wrong" + redis_server.password)
    code, more = _run_cli(capsys, caplog, "publish", "--to", redis_server.url_without_password, *common)
    assert code == 1 and "refused the credentials" in more
    text += more
    wrong = redis_server.url.replace(redis_server.password, "x" + redis_server.password)
    code, more = _run_cli(capsys, caplog, "publish", "--to", wrong, *common)
    assert code == 1 and "refused the credentials" in more and redis_server.url_without_password in more
    text += more
    down = redis_server.url.replace(f":{redis_server.port}/", ":1/")
    code, more = _run_cli(capsys, caplog, "publish", "--to", down, *common)
    assert code == 1 and "unreachable" in more and "redis://127.0.0.1:1/0" in more
    text += more
    code, more = _run_cli(capsys, caplog, "publish", "--to", redis_server.url.replace("redis:", "http:"),
                          *common)
    assert code == 2 and "not a redis:// or rediss:// URL" in more and "***@" in more
    text += more
    assert repr(target(redis_server, "t5")).count(redis_server.password) == 0
    assert redis_server.password not in text
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [str(p) for p in logs.rglob("*") if p.is_file()
              and redis_server.password.encode() in p.read_bytes()]
    assert not leaked, f"the Redis password is in Ray's logs: {leaked}"


def test_the_jobs_publish_flag(trained_run, redis_server, capsys, caplog):
    """`jobs/backfill.py ... --publish URL`: the committed day is skipped, then published;
    a bad URL fails before any work, naming it without the password."""
    from conftest import small_overrides
    day = str(trained_run["day"])
    sets = [a for o in small_overrides(trained_run["root"]) for a in ("--set", o)]
    code, text = _run_cli(capsys, caplog, "backfill", "--start", day, "--end", day,
                          "--publish", redis_server.url, "--prefix", "t6", *sets)
    assert code == 0 and f"dt={day} already committed, skipped" in text
    assert f"published dt={day} as t6:v{day}-" in text and redis_server.password not in text
    assert redis_server.client().get("t6:live").decode().startswith(f"v{day}-")
    before = storage.generation(trained_run["cfg"].output.uri, day)
    bad = redis_server.url.replace("redis://", "redis+x://")
    code, text = _run_cli(capsys, caplog, "run", "--date", day, "--publish", bad, *sets)
    assert code == 2 and "not a redis:// or rediss:// URL" in text and redis_server.password not in text
    assert storage.generation(trained_run["cfg"].output.uri, day) == before     # nothing ran
