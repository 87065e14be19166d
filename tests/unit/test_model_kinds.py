"""One registry of model kinds (``raymedia.models.KINDS`` with the CLI's aliases): every
place that takes a model name accepts the same names and refuses the same way."""

import subprocess
import sys
from pathlib import Path

import pytest

from raymedia import config, models, offline, tune

ROOT = Path(__file__).resolve().parents[2]


def test_kinds_and_aliases_resolve():
    assert models.KINDS == ("two_tower", "sequence")
    assert [models.kind(n) for n in models.KINDS] == list(models.KINDS)
    assert models.kind("two-tower") == "two_tower"
    assert set(models.names()) == {"two_tower", "sequence", "two-tower"}


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'gbdt'; choose from two_tower, sequence, two-tower"):
        models.kind("gbdt")


def test_evaluate_and_tune_refuse_an_unknown_model_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gbdt'; choose from two_tower, sequence"):
        offline.run(str(tmp_path / "none"), str(tmp_path / "out"), model="gbdt")
    with pytest.raises(ValueError, match="unknown model 'gbdt'; choose from two_tower, sequence"):
        tune.tune(str(tmp_path / "none"), "gbdt", 1, str(tmp_path / "out"))
    # an alias passes the check and gets as far as the (missing) data
    with pytest.raises(FileNotFoundError, match="no dt=YYYY-MM-DD partitions"):
        offline.run(str(tmp_path / "none"), str(tmp_path / "out"), model="two-tower")


def test_the_config_accepts_every_kind_and_nothing_else():
    cfg = config.load(None, [f"train.models={','.join(models.KINDS)}"])
    assert cfg.model_names() == list(models.KINDS)
    for kind in models.KINDS:
        assert config.load(None, [f"score.recommender={kind}"]).score.recommender == kind
    with pytest.raises(config.ConfigError, match=r"score.recommender must be one of \['two_tower', 'sequence'\]"):
        config.load(None, ["score.recommender=two-tower"])


def test_the_registry_loads_without_torch():
    """The CLI and the config check kind names; starting the command stays torch-free."""
    code = "import sys, raymedia.cli; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
