"""The command line a user types: config show, errors, generate safety, job entry points."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raymedia.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_config_show_prints_the_resolved_config(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("score:\n  top_k: 25\n")
    assert main(["config", "show", "--config", str(f), "--set", "train.epochs=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["score"]["top_k"] == 25 and shown["train"]["epochs"] == 2


def test_bad_config_exits_2_naming_the_field(capsys):
    assert main(["config", "show", "--set", "score.top_k=0"]) == 2
    assert "score.top_k must be >= 1, got 0" in capsys.readouterr().err


def test_run_with_no_events_fails_clearly_before_starting_ray(tmp_path):
    code = ("import sys, ray; from raymedia.cli import main; "
            "rc = main(sys.argv[1:]); print('ray started:', ray.is_initialized()); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "run", "--date", "2026-01-10",
                        "--set", f"data.events_uri={tmp_path}/none"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert "no event partitions for 2025-12-13..2026-01-09" in r.stderr
    assert "ray started: False" in r.stdout


def test_generate_writes_and_refuses_to_clobber_foreign_events(capsys, tmp_path):
    out = tmp_path / "data"
    assert main(["generate", "--users", "20", "--items", "30", "--days", "2", "--out", str(out)]) == 0
    assert (out / "catalog" / "catalog.parquet").exists()
    assert sorted(p.name for p in (out / "events").iterdir()) == ["dt=2026-01-05", "dt=2026-01-06"]
    assert main(["generate", "--users", "20", "--items", "30", "--days", "2", "--out", str(out)]) == 0
    (out / "generate.json").unlink()          # now the events look like someone else's
    assert main(["generate", "--users", "20", "--items", "30", "--days", "2", "--out", str(out)]) == 2
    assert "already holds events" in capsys.readouterr().err


def test_jobs_are_runnable_entry_points():
    for job in ("nightly", "train", "score", "backfill"):
        r = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert ("--start" if job == "backfill" else "--date") in r.stdout and f"jobs/{job}.py" in r.stdout


def test_show_refuses_a_negative_limit(capsys):
    with pytest.raises(SystemExit) as e:
        main(["show", "out", "--dt", "2026-01-10", "--limit", "-1"])
    assert e.value.code == 2 and "argument --limit: must be >= 0, got -1" in capsys.readouterr().err


def test_a_list_yaml_with_set_exits_2_naming_the_file(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- train\n- score\n")
    assert main(["config", "show", "--config", str(f), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: the top level must be a mapping of sections" in err and "Traceback" not in err
