"""``raymedia tune``: a tiny ASHA search on the small world writes a best config that
``--config`` accepts and that is one of the trials' (the best), lists every trial with
its validation NDCG, and trains and validates on rows without any user's test event."""

import datetime as dt
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from raymedia import config, storage
from raymedia.cli import main


def _replace_at(histories, sentinel: int, back: int):
    """Histories with each user's ``back``-th last item (1: the last) replaced by ``sentinel``."""
    def poison(batch: pa.Table) -> pa.Table:
        col = batch["items"].combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False).copy()
        off = col.offsets.to_numpy()
        n = off[1:] - off[:-1]
        at = (off[1:] - back)[n >= back]
        flat[at] = sentinel
        items = pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(flat, col.type.value_type))
        return batch.set_column(batch.schema.get_field_index("items"), "items", items)
    return histories.map_batches(poison, batch_format="pyarrow")


def _rows_hold(histories, cfg, day: dt.date, sentinel: int) -> dict[str, int]:
    """How often ``sentinel`` occurs in each column of the training rows a trial builds."""
    from raymedia import features, train
    found = {"items": 0, "targets": 0, "val_target": 0}
    for b in train.training_rows(histories, cfg, features.day_start_us(day)).iter_batches(batch_format="numpy"):
        for k in found:
            found[k] += int(np.sum(b[k] == sentinel))
    return found


# slow until it has passed on a machine with one Ray instance: on the shared development
# machine a finished trial's placement group outlived it (Ray Train's cleaner refused to run
# with several Ray instances on the host) and the second trial waited for a CPU for good
@pytest.mark.slow
def test_a_tiny_search_writes_the_best_trials_config_as_yaml(world, tmp_path, capsys, monkeypatch):
    from ray import tune as rtune
    seen = {}
    real = rtune.with_parameters

    def spy(fn, **kwargs):          # what every trial is handed: the rows and the config
        seen.update(kwargs)
        return real(fn, **kwargs)
    monkeypatch.setattr(rtune, "with_parameters", spy)

    out = tmp_path / "tune"
    # fixed here (so not searched): a short history, 2 epochs, a narrow model, big batches
    sets = ["data.history_len=10", "train.epochs=2", "train.patience=0", "train.batch_size=64",
            "sequence.dim=16", "ray.progress_bars=false"]
    # one trial at a time: on 2 shared CPUs two trials' workers would starve each other's data
    assert main(["tune", "--events", f"{world['root']}/events", "--model", "sequence", "--budget", "2",
                 "--parallel", "1", "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    trials = json.loads((out / "trials.json").read_text())
    # one summary line per trial (the epoch log lines of the trials say "validation NDCG@10" too)
    summary = re.findall(r"^validation NDCG@10 [\d.]+ after \d+ epoch\(s\): ", printed, re.M)
    assert len(trials) == 2 and len(summary) == 2, (trials, printed)
    assert all(t["error"] is None and t["val_ndcg"] is not None and math.isfinite(t["val_ndcg"])
               and 0 <= t["val_ndcg"] <= 1 and 1 <= t["epochs"] <= 2 for t in trials), trials
    assert trials[0]["val_ndcg"] == max(t["val_ndcg"] for t in trials)
    assert trials[0]["params"] != trials[1]["params"]                  # two different samples
    searched = set(trials[0]["params"])
    assert searched == {"train.lr", "train.weight_decay", "sequence.layers", "sequence.dropout"}

    best = config.load(str(out / "best.yaml"))                          # what --config accepts
    for key, value in trials[0]["params"].items():                      # the best trial's values
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == pytest.approx(value)
    assert 1e-3 <= best.train.lr <= 1e-2 and best.sequence.layers in (1, 2, 3)
    assert 0.1 <= best.sequence.dropout <= 0.5
    # the user's own --set values are kept; the search's working paths are not
    assert (best.data.history_len, best.train.epochs, best.train.batch_size, best.sequence.dim) == (10, 2, 64, 16)
    assert best.data.events_uri == config.Config().data.events_uri
    assert f"best config: {storage.join(str(out), 'best.yaml')}" in printed
    assert not (out / "work").exists() or not any((out / "work").rglob("*.parquet"))

    # Test events (each user's last) were never used: in the rows the trials trained and
    # validated on, a marker put in place of every user's last item never shows up, while
    # one in place of the second-to-last is each validation user's target.
    histories, cfg = seen["histories"], config.from_dict(seen["base"])
    assert cfg.train.val_share == 1.0 and seen["day"] == world["day"]
    marker = seen["vocab"].size + 7
    assert _rows_hold(_replace_at(histories, marker, 1), cfg, seen["day"], marker) == \
        {"items": 0, "targets": 0, "val_target": 0}
    control = _rows_hold(_replace_at(histories, marker, 2), cfg, seen["day"], marker)
    assert control["val_target"] > 0, control


def test_bad_tune_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["tune", "--events", str(tmp_path / "none"), "--model", "sequence", "--budget", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--budget must be >= 1 trial, got 0" in capsys.readouterr().err
    fixes_all = [a for k in ("train.lr=0.003", "train.batch_size=16", "train.weight_decay=0",
                             "sequence.dim=16", "sequence.layers=1", "sequence.dropout=0.2")
                 for a in ("--set", k)]
    assert main(["tune", "--events", str(tmp_path / "none"), "--model", "sequence", "--budget", "1",
                 "--out", str(tmp_path / "o"), *fixes_all]) == 2
    assert "nothing left to tune" in capsys.readouterr().err
