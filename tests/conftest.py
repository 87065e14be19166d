"""Shared fixtures and helpers for both rooms of the suite.

``tests/unit/``: no Ray, no servers, no training (``make test-unit``, seconds); a unit
test that asks for a fixture of the other room is refused at collection.
``tests/system/``: one real local Ray for the session, the S3 server, Redis, clusters,
and one small pipeline run (generate -> train -> score -> commit -> evaluate on a small
synthetic world) that the end-to-end tests assert on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

# The S3 server's secret key is a canary: a fresh random value per session that must
# never appear in any log, commit, report or exception (tests/system/test_security.py).
CANARY = "rmcanary" + secrets.token_hex(12)

SYSTEM_FIXTURES = {"s3", "ray_session", "world", "trained_run"}


def pytest_collection_modifyitems(config, items):
    """Keep the unit room free of Ray and servers: it must stay a seconds-long run."""
    for item in items:
        wanted = SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ()))
        if "/tests/unit/" in str(item.path) and wanted:
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(wanted)}: "
                                    "move it to tests/system/")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the whole session.

    Its endpoint and (test-only) credentials go into this process's environment
    before Ray starts, so Ray workers find the server through the standard AWS
    variables, exactly as on a real cluster.
    """
    from s3_server import make_server
    server = make_server(tmp_path_factory.mktemp("s3"), secret_key=CANARY)
    try:
        server.start()
        server.make_bucket("raymedia")
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        yield server
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_session(s3):
    import ray
    ray.init(num_cpus=2, include_dashboard=None, logging_level=logging.WARNING,
             configure_logging=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


def small_overrides(root: str, *extra: str) -> list[str]:
    """``--set`` values of the small test configuration (also passed to subprocesses)."""
    return [f"data.events_uri={root}/events", f"data.catalog_uri={root}/catalog",
            f"output.uri={root}/scores", f"output.models_uri={root}/models",
            "data.lookback_days=14", "data.history_len=30", "train.epochs=6", "train.batch_size=32",
            # the tests' tiny worlds train a few epochs: the faster rate of the old recipe, and
            # early stopping on 1 user in 10 (the defaults are set for real logs)
            "train.lr=0.003", "train.val_share=0.1",
            "score.top_k=20", "score.batch_size=256", "eval.batch_size=256", "ray.progress_bars=false", *extra]


def small_config(root: str, *extra: str):
    from raymedia import config
    return config.load(None, small_overrides(root, *extra))


@pytest.fixture(scope="session")
def world(tmp_path_factory, ray_session):
    """A small generated data set (written with Ray tasks)."""
    from raymedia.data.generate import GeneratorConfig, generate
    root = str(tmp_path_factory.mktemp("world"))
    gen = GeneratorConfig(users=1200, items=400, days=14, seed=7, categories=12)
    generate(gen, root)
    return {"root": root, "gen": gen, "day": gen.start + dt.timedelta(days=gen.days)}


@pytest.fixture(scope="session")
def trained_run(world):
    """One full nightly run (trains both models) on the small world."""
    from raymedia import pipeline
    cfg = small_config(world["root"])
    result = pipeline.run_day(cfg, world["day"])
    return {"cfg": cfg, "result": result, **world}


# A MIND (Microsoft News Dataset) folder in miniature: news.tsv and behaviors.tsv rows
MIND_NEWS = [
    ("N1", "sports", "football_nfl", "Bears win", "Chicago beat the Packers.",
     '[{"Label": "Chicago Bears", "Type": "O"}]', '[{"Label": "Green Bay Packers"}]'),
    ("N2", "news", "newsus", "Storm hits coast", "A storm.", "[]", "[]"),
    ("N3", "sports", "basketball_nba", "Bulls lose", "", '[{"Label": "Chicago Bulls"}]', "not json"),
    ("N4", "lifestyle", "lifestylebuzz", "Ten recipes", "Food.", "[]", "[]"),
]
MIND_BEHAVIORS = [
    ("1", "U1", "11/15/2019 8:55:22 AM", "N4 N2", "N1-1 N2-0 N3-0"),
    ("2", "U2", "11/15/2019 11:05:00 PM", "", "N3-1 N1-1"),
    ("3", "U1", "11/16/2019 12:00:01 AM", "N4 N2 N1", "N3-0 N4-1"),
]


def write_mind(folder, behaviors, news) -> str:
    """``behaviors.tsv`` and ``news.tsv`` (url filled in) under a new ``folder``."""
    folder.mkdir()
    (folder / "behaviors.tsv").write_text("".join("\t".join(r) + "\n" for r in behaviors))
    (folder / "news.tsv").write_text("".join("\t".join([*r[:5], "https://x", *r[5:]]) + "\n" for r in news))
    return str(folder)


def synthetic_mind(folder, users: int = 150, items: int = 40, seed: int = 0) -> str:
    """A MIND folder big enough to train on: each user reads one of four topics; three
    impressions each over two days, clicks on the shown items of their topic."""
    import numpy as np
    rng = np.random.default_rng(seed)
    topics = ["sports", "news", "finance", "travel"]
    news = [(f"N{i}", topics[i % 4], f"{topics[i % 4]}_{i % 3}", f"{topics[i % 4]} story {i}",
             f"about {topics[i % 4]}", "[]", "[]") for i in range(1, items + 1)]
    rows = []
    for u in range(users):
        history = " ".join(f"N{i}" for i in rng.choice(range(1 + u % 4, items + 1, 4), 4, replace=False))
        for k in range(3):
            shown = rng.choice(range(1, items + 1), 6, replace=False)
            when = f"11/{15 + k // 2}/2019 {1 + (u + 5 * k) % 12}:{u % 60:02d}:{k:02d} {'AM' if k % 2 else 'PM'}"
            rows.append((f"{len(rows) + 1}", f"U{u}", when, history,
                         " ".join(f"N{i}-{int(i % 4 == (1 + u % 4) % 4)}" for i in shown)))
    return write_mind(folder, rows, news)

