"""Config: YAML + overrides into typed dataclasses; bad values name the field."""

import time

import pytest

from raymedia import config
from raymedia.config import ConfigError


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: 0.01\ndata:\n  exclude_seen: false\n")
    cfg = config.load(str(f), ["train.epochs=5", "score.top_k=7", "ray.address=auto"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.score.top_k) == (5, 0.01, 7)
    assert cfg.data.exclude_seen is False and cfg.ray.address == "auto"
    assert cfg.data.history_len == config.DataConfig().history_len   # untouched default



def test_on_and_off_choices_read_as_written_though_yaml_makes_them_booleans(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("content:\n  enabled: on\n")
    assert config.load(str(f)).content.enabled == "on"
    assert config.load(str(f), ["content.enabled=off"]).content.enabled == "off"
    assert config.load(None, ["content.enabled=on"]).content.enabled == "on"
    with pytest.raises(ConfigError, match="score.recommender must be one of"):
        config.load(None, ["score.recommender=on"])           # only where on/off are choices


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=0"], "train.epochs must be >= 1, got 0"),
    (["train.epochs=two"], "train.epochs must be an integer"),
    (["data.exclude_seen=maybe"], "data.exclude_seen must be true or false"),
    (["score.recommender=knn"], "score.recommender must be one of"),
    (["sequence.dropout=1.5"], "sequence.dropout must be <= 0.9"),
    (["train.epoch=3"], "unknown config field(s): train.epoch"),
    (["sequence.dim=30", "sequence.heads=4"], "sequence.dim (30) must be divisible by sequence.heads"),
    (["two_tower.last_items=-1"], "two_tower.last_items must be >= 0, got -1"),
    (["two_tower.last_items=8", "data.history_len=4"],
     "two_tower.last_items (8) must be <= data.history_len (4)"),
    (["train.models=two_tower,knn"], "train.models has unknown model(s) ['knn']"),
    (["nonsense"], "must look like section.field=value"),
    (["data.lookback_days=1000000"], "data.lookback_days must be <= 36600, got 1000000"),
    (["train.epochs=99999999999999999999"], "train.epochs is out of range (|value| < 2**63)"),
    (["data=5", "data.lookback_days=3"], "override 'data.lookback_days': data is not a section"),
    (["output.gc_grace_minutes=0"], "output.gc_grace_minutes must be >= 1.0, got 0.0"),
    (["train.epochs=[1, [2, 3]]"], "train.epochs must be an integer"),
])
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        config.load(None, overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("old, new", sorted(config.MOVED.items()))
def test_a_moved_key_fails_naming_its_new_place_in_yaml_and_in_set(tmp_path, old, new):
    section, key = old.split(".")
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: 3\n")
    for args in ((str(f), []), (None, [f"{old}=3"])):
        with pytest.raises(ConfigError) as e:
            config.load(*args)
        assert f"{old} is now {new}" in str(e.value)
    section, key = new.split(".")
    assert hasattr(getattr(config.Config(), section), key)      # the new key is a real field


def test_each_stage_has_its_own_section():
    """Evaluation sizes its own actor pool; the user state its own shuffle; one seen policy."""
    cfg = config.load(None, ["score.batch_size=7", "score.concurrency=3", "score.item_chunk=5",
                             "state.shuffle_partitions=9", "state.incremental=false",
                             "data.exclude_seen=false"])
    assert (cfg.eval.batch_size, cfg.eval.concurrency, cfg.eval.num_cpus, cfg.eval.item_chunk) == \
        (512, 1, 1.0, 65536)                                    # untouched by the score keys
    assert (cfg.state.shuffle_partitions, cfg.state.incremental, cfg.data.exclude_seen) == (9, False, False)
    with pytest.raises(ConfigError, match="eval.concurrency must be >= 1, got 0"):
        config.load(None, ["eval.concurrency=0"])


def test_yaml_is_data_only(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(str(f))


def test_hash_tracks_every_knob():
    a, b = config.load(), config.load(None, ["score.top_k=11"])
    assert a.hash() == config.load().hash() != b.hash()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)                                # ~500 bytes, 9**9 values once expanded
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to more than 100000 values"):
        config.load(str(f))
    flow = "{" + ", ".join(BOMB.strip().split("\n")) + "}"      # the same bomb on one line
    with pytest.raises(ConfigError, match="override 'train.epochs': its aliases expand"):
        config.load(None, [f"train.epochs={flow}"])
    assert time.perf_counter() - t0 < 5


def test_modest_yaml_anchors_still_work(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("score:\n  top_k: &k 7\neval:\n  k: *k\n")
    cfg = config.load(str(f))
    assert (cfg.score.top_k, cfg.eval.k) == (7, 7)


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "the top level must be a mapping of sections (data:, train:, ...), got a list"),
    ("just words\n", "got a str"),
    ("train: 5\n", "override 'train.epochs': train is not a section (it is 5)"),
    ("score: [1, 2]\n", "score must be a mapping, got [1, 2]"),
    ("1: 2\n", "unknown config field(s): 1"),
])
def test_a_config_that_is_not_a_mapping_of_sections_is_a_config_error(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(f), ["train.epochs=3"])
    assert message in str(e.value)


def test_a_huge_config_file_is_refused(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="a config is at most 1048576"):
        config.load(str(f))


def test_exponent_notation_without_a_dot_is_a_number():
    from raymedia import config
    assert config.load(None, ["train.lr=3e-3"]).train.lr == 0.003


def test_the_media_rules_preset_loads_and_the_defaults_keep_every_rule_off():
    """configs/rules-media.yaml (the recommended rules, BENCHMARKS.md) is a valid config that
    turns the rules on; without it no rule shapes a list."""
    from pathlib import Path

    from raymedia.rules import ListRules
    preset = Path(__file__).resolve().parents[2] / "configs" / "rules-media.yaml"
    rules = ListRules.from_config(config.load(str(preset)))
    assert rules.active and rules.top_k == 10
    assert (rules.collapse_series, rules.dedup_key, rules.max_per_category) == ("next", "title", 4)
    assert rules.min_categories <= rules.top_k and rules.fresh_boost > 0
    assert not ListRules.from_config(config.Config()).active
