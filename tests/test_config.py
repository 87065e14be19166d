"""Config: YAML + overrides into typed dataclasses; bad values name the field."""

import pytest

from raymedia import config
from raymedia.config import ConfigError


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: 0.01\nscore:\n  exclude_seen: false\n")
    cfg = config.load(str(f), ["train.epochs=5", "score.top_k=7", "ray.address=auto"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.score.top_k) == (5, 0.01, 7)
    assert cfg.score.exclude_seen is False and cfg.ray.address == "auto"
    assert cfg.data.history_len == config.DataConfig().history_len   # untouched default


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=0"], "train.epochs must be >= 1, got 0"),
    (["train.epochs=two"], "train.epochs must be an integer"),
    (["score.exclude_seen=maybe"], "score.exclude_seen must be true or false"),
    (["score.recommender=knn"], "score.recommender must be one of"),
    (["sequence.dropout=1.5"], "sequence.dropout must be <= 0.9"),
    (["train.epoch=3"], "unknown config field(s): train.epoch"),
    (["sequence.dim=30", "sequence.heads=4"], "sequence.dim (30) must be divisible by sequence.heads"),
    (["two_tower.last_items=-1"], "two_tower.last_items must be >= 0, got -1"),
    (["two_tower.last_items=8", "data.history_len=4"],
     "two_tower.last_items (8) must be <= data.history_len (4)"),
    (["train.models=two_tower,knn"], "train.models has unknown model(s) ['knn']"),
    (["nonsense"], "must look like section.field=value"),
])
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        config.load(None, overrides)
    assert message in str(e.value)


def test_yaml_is_data_only(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(str(f))


def test_hash_tracks_every_knob():
    a, b = config.load(), config.load(None, ["score.top_k=11"])
    assert a.hash() == config.load().hash() != b.hash()
