"""Publish a committed day into Redis, where the online service reads it.

Serving must never see a half-loaded day or a mix of two days, so each commit
gets its own key space and readers go through one pointer::

    <prefix>:live                      -> "v<day>-<generation>"   (the version readers use)
    <prefix>:v<day>-<generation>:<user_id> -> one JSON value per user (``VALUE_FORMAT``)
    <prefix>:versions                  hash: version -> manifest (JSON)

Ray tasks write a version's keys in parallel, pipelined; only when every user is
written does one Lua script switch ``<prefix>:live`` (atomic in Redis), so a
crash or an outage before that leaves readers on the previous version and a
rerun (idempotent SETs of the same values) completes it. Versions that are no
longer live expire ``keep_days`` after they were replaced.

Credentials come from the URL (``redis://:password@host:port/db``) or from
``REDIS_PASSWORD``, as the redis client takes them; messages show the URL
without them (``storage.redact``), and ``Target`` never prints its password.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from raymedia import storage

VALUE_FORMAT = 1        # "format" in every value; bump on incompatible changes
VERSION_RE = re.compile(r"v(\d{4}-\d{2}-\d{2})-(\d+)")
SECONDS_PER_DAY = 86_400

# Atomic switch: KEYS = live pointer, versions hash; ARGV = version, day, generation,
# force ("1"/"0"), manifest. Refuses to move the pointer back to an older day or
# generation unless forced; switching to the version already live is a no-op.
_SWITCH = """
local live = redis.call('GET', KEYS[1])
if live == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
  return 'same'
end
if live and ARGV[4] ~= '1' then
  local day, gen = string.match(live, '^v(%d%d%d%d%-%d%d%-%d%d)%-(%d+)$')
  if day and (day > ARGV[2] or (day == ARGV[2] and tonumber(gen) > tonumber(ARGV[3]))) then
    return 'older:' .. live
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
return 'switched'
"""


class PublishError(RuntimeError):
    """Redis unreachable, refused the credentials, or lost writes: nothing was switched."""


class NotCommitted(FileNotFoundError):
    """Only a committed day can be published."""


class OlderThanLive(ValueError):
    """The day (or generation) is older than the live one; ``--force`` publishes it anyway."""


@dataclass(frozen=True)
class Target:
    """Where to publish: a Redis database and a key prefix. The password never prints."""

    host: str
    port: int
    db: int
    prefix: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False

    @property
    def url(self) -> str:
        """For messages: no credentials."""
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"

    def client(self):
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username,
                           password=self.password, ssl=self.ssl, socket_timeout=30,
                           socket_connect_timeout=10, retry=Retry(ExponentialBackoff(cap=2), 3))

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])


def parse_target(uri: str, prefix: str = "raymedia") -> Target:
    """``redis[s]://[[user]:password@]host[:port][/db]``; the password falls back to
    ``REDIS_PASSWORD``. Errors name the URL without its credentials."""
    parts = urllib.parse.urlsplit(uri)
    shown = storage.redact(uri)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--publish {shown}: not a redis:// or rediss:// URL")
    if not parts.hostname:
        raise ValueError(f"--publish {shown}: no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"--publish {shown}: database must be a number, not {path!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", prefix):
        raise ValueError(f"--prefix {prefix!r}: use 1-64 of [A-Za-z0-9_.-]")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"--publish {shown}: bad port") from None
    password = urllib.parse.unquote(parts.password) if parts.password else os.environ.get("REDIS_PASSWORD")
    return Target(host=parts.hostname, port=port, db=int(path or 0), prefix=prefix,
                  username=urllib.parse.unquote(parts.username) if parts.username else None,
                  password=password or None, ssl=parts.scheme == "rediss")


def version_of(day: str, generation: int) -> str:
    return f"v{day}-{generation}"


@dataclass(frozen=True)
class PublishResult:
    dt: str
    version: str
    status: str             # "switched", or "unchanged" when this commit was already live
    users: int
    live: str               # the version readers resolve after this call
    retired: tuple[str, ...] = ()   # versions set to expire by this call
    seconds: float = 0.0


def _connect(target: Target):
    import redis
    client = target.client()
    try:
        client.ping()
    except redis.AuthenticationError:
        raise PublishError(f"redis at {target.url} refused the credentials (user "
                           f"{target.username or 'default'}; password from the URL or REDIS_PASSWORD)") from None
    except redis.RedisError as exc:
        raise PublishError(f"redis at {target.url} is unreachable: {type(exc).__name__}: {exc}") from None
    return client


def _order(version: str) -> tuple[str, int]:
    m = VERSION_RE.fullmatch(version)
    return (m.group(1), int(m.group(2))) if m else ("", 0)


def publish(output_uri: str, day: dt.date | str, target: Target, force: bool = False,
            keep_days: float = 2.0, batch_users: int = 2000, pipeline_depth: int = 500) -> PublishResult:
    """Load day ``day``'s committed recommendations (and predictions) into ``target`` and
    make them the live version. Re-publishing the live commit is a no-op."""
    import redis
    day = storage.day(day)
    if keep_days < 0:
        raise ValueError(f"--keep-days {keep_days}: must be >= 0")
    c = storage.read_commit(output_uri, day)
    if c is None:
        raise NotCommitted(f"dt={day} is not committed under {storage.redact(output_uri)}: "
                           "only a committed day can be published")
    client = _connect(target)
    try:
        return _publish(client, output_uri, c, target, force, keep_days, batch_users, pipeline_depth)
    except redis.RedisError as exc:
        raise PublishError(f"publishing dt={c.dt} to {target.url} failed: {type(exc).__name__}: "
                           f"{exc}; readers stay on the version they had; rerun to complete") from None


def _publish(client, output_uri: str, c: storage.Commit, target: Target, force: bool, keep_days: float,
             batch_users: int, pipeline_depth: int) -> PublishResult:
    t0 = time.perf_counter()
    version = version_of(c.dt, c.generation)
    live = (client.get(target.key("live")) or b"").decode() or None
    users = int(c.rows.get("recommendations", 0))
    if live == version:
        return PublishResult(c.dt, version, "unchanged", users, live, seconds=time.perf_counter() - t0)
    if live and not force and _order(live) > _order(version):
        raise OlderThanLive(f"dt={c.dt} (generation {c.generation}) is older than the live "
                            f"{live} at {target.url}: pass --force to publish it anyway")
    manifest = {"dt": c.dt, "generation": c.generation, "run_id": c.run_id, "users": users,
                "model_versions": c.model_versions, "committed_at": c.created_at}
    client.hset(target.key("versions"), version, json.dumps({**manifest, "complete": False}))
    try:
        written = _write_version(output_uri, c, target, version, batch_users, pipeline_depth)
    except Exception as exc:    # noqa: BLE001 - Ray wraps the task's error; report it plainly
        raise PublishError(f"publishing dt={c.dt} as {version} to {target.url} failed: {_cause(exc)}; "
                           f"readers stay on {live or 'nothing'}; rerun to complete") from None
    if written != users:
        raise PublishError(f"{version}: wrote {written} users, the commit has {users}; not switched")
    done = {**manifest, "complete": True,
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    outcome = client.eval(_SWITCH, 2, target.key("live"), target.key("versions"), version, c.dt,
                          str(c.generation), "1" if force else "0", json.dumps(done)).decode()
    if outcome.startswith("older:"):
        raise OlderThanLive(f"{outcome[6:]} went live at {target.url} while {version} was being "
                            "written; not switched (pass --force to publish it anyway)")
    retired = retire(client, target, keep_days)
    return PublishResult(c.dt, version, "switched" if outcome == "switched" else "unchanged", users,
                         version, retired, time.perf_counter() - t0)


def _cause(exc: BaseException) -> str:
    """The innermost error of a Ray task failure, in one line."""
    inner = getattr(exc, "cause", None) or exc.__cause__ or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[-1] if text else ''}"


def _write_version(output_uri: str, c: storage.Commit, target: Target, version: str,
                   batch_users: int, pipeline_depth: int) -> int:
    """Every committed user's value under ``<prefix>:<version>:<user>``, from Ray tasks."""
    rec_uris = c.uris(output_uri, "recommendations")
    if not rec_uris:
        return 0
    fs, _ = storage.resolve(output_uri)
    preds = (storage.read_committed(output_uri, c.dt, "predictions")
             if c.uris(output_uri, "predictions") else None)
    preds_ref = ray.put(preds)
    recs = ray.data.read_parquet([storage.resolve(u)[1] for u in rec_uris], filesystem=fs,
                                 partitioning=None)
    counts = recs.map_batches(
        _write_users, batch_size=batch_users, batch_format="pyarrow",
        fn_kwargs={"target": target, "version": version, "dt": c.dt, "preds_ref": [preds_ref],
                   "pipeline_depth": pipeline_depth}).take_all()
    return sum(int(r["written"]) for r in counts)


# recommendations columns that are not per-item values
_USER_COLUMNS = {"user_id", "items", "scores", "model_version", "generated_at"}


def values(recs: pa.Table, preds: pa.Table | None, dt_: str) -> list[tuple[int, bytes]]:
    """(user_id, JSON value) for each row of ``recs``: see README "Publishing to Redis"."""
    cols = recs.to_pydict()
    item_cols = [n for n, t in zip(recs.column_names, recs.schema.types)
                 if n not in _USER_COLUMNS and pa.types.is_list(t)]
    pred_cols: dict[str, list] = {}
    if preds is not None:           # per-user predictions, matched by user id (None if absent)
        import pyarrow.compute as pc
        at = pc.index_in(recs["user_id"], value_set=preds["user_id"].combine_chunks())
        pred_cols = {n: preds[n].take(at).to_pylist() for n in preds.column_names
                     if n not in ("user_id", "model_version")}
    out = []
    for i, user in enumerate(cols["user_id"]):
        gen = cols["generated_at"][i]
        v = {"format": VALUE_FORMAT, "user_id": user, "dt": dt_, "items": cols["items"][i],
             "scores": cols["scores"][i], "model_version": cols["model_version"][i],
             "generated_at": gen.isoformat() if gen is not None else None}
        if item_cols:
            v["item_predictions"] = {n: cols[n][i] for n in item_cols}
        if pred_cols:
            v["predictions"] = {n: c[i] for n, c in pred_cols.items()}
        out.append((user, json.dumps(v, separators=(",", ":")).encode()))
    return out


def _write_users(batch: pa.Table, target: Target, version: str, dt: str, preds_ref: list,
                 pipeline_depth: int) -> pa.Table:
    """One Ray task's share: SETs (no TTL, so a rerun also clears an expiry), pipelined."""
    preds = ray.get(preds_ref[0])
    client = target.client()
    pipe = client.pipeline(transaction=False)
    written = 0
    for n, (user, value) in enumerate(values(batch, preds, dt), 1):
        pipe.set(target.key(version, str(user)), value)
        if n % pipeline_depth == 0:
            written += sum(bool(r) for r in pipe.execute())
    written += sum(bool(r) for r in pipe.execute())
    client.close()
    return pa.table({"written": [written]})


def retire(client, target: Target, keep_days: float) -> tuple[str, ...]:
    """Set the keys of every version that is no longer live to expire ``keep_days`` from now
    (once per version), and forget versions whose keys have expired.

    Retired: versions older than the live one, and newer ones that were live once (a
    forced switch back). Left alone: newer versions never completed, which may be a
    publish still in progress (its keys must not get a TTL).
    """
    live = (client.get(target.key("live")) or b"").decode()
    now = time.time()
    ttl = int(keep_days * SECONDS_PER_DAY)
    retired = []
    for name, raw in client.hgetall(target.key("versions")).items():
        version, meta = name.decode(), json.loads(raw)
        if version == live or (_order(version) > _order(live) and not meta.get("complete")):
            continue
        if "retired_at" in meta:
            if now >= meta["retired_at"] + ttl:
                client.hdel(target.key("versions"), version)
            continue
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=target.key(version, "*"), count=5000):
            if ttl:
                pipe.expire(key, ttl)
            else:
                pipe.unlink(key)
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()
        client.hset(target.key("versions"), version, json.dumps({**meta, "retired_at": now}))
        retired.append(version)
    return tuple(retired)
