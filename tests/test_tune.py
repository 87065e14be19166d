"""``raymedia tune``: a tiny ASHA search on a tiny world writes a best config that
``--config`` accepts and that is the best trial's."""

import json

import pytest

from raymedia import config, storage
from raymedia.cli import main


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory, ray_session):
    from raymedia.data.generate import GeneratorConfig, generate
    root = str(tmp_path_factory.mktemp("tiny"))
    generate(GeneratorConfig(users=150, items=60, days=4, seed=3, categories=4), root)
    return root


def test_a_tiny_search_writes_the_best_trials_config_as_yaml(tiny_world, tmp_path, capsys):
    out = tmp_path / "tune"
    # half a CPU per trial's worker: on 2 CPUs the Ray Data tasks feeding it need the rest
    sets = ["data.history_len=10", "train.epochs=2", "train.patience=0", "train.cpus_per_worker=0.5",
            "ray.progress_bars=false"]
    assert main(["tune", "--events", f"{tiny_world}/events", "--model", "sequence", "--budget", "2",
                 "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 2 and printed.count("validation NDCG@10") == 2
    assert all(0 < t["val_ndcg"] <= 1 and 1 <= t["epochs"] <= 2 for t in trials), trials
    assert trials[0]["val_ndcg"] == max(t["val_ndcg"] for t in trials)
    assert trials[0]["params"] != trials[1]["params"]                  # two different samples
    best = config.load(str(out / "best.yaml"))                          # what --config accepts
    for key, value in trials[0]["params"].items():
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == pytest.approx(value)
    assert 3e-4 <= best.train.lr <= 3e-3 and best.sequence.layers in (1, 2, 3)
    # the user's own --set values are kept; the search's working paths are not
    assert (best.data.history_len, best.train.epochs, best.train.cpus_per_worker) == (10, 2, 0.5)
    assert best.data.events_uri == config.Config().data.events_uri
    assert f"best config: {storage.join(str(out), 'best.yaml')}" in printed


def test_bad_tune_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["tune", "--events", str(tmp_path / "none"), "--model", "sequence", "--budget", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--budget must be >= 1 trial, got 0" in capsys.readouterr().err
