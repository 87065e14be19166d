"""Security: checkpoints load without pickle and only as published (sha256 in the registry),
no secret ever reaches a log, commit, report or exception, config is data only, and no
input can make raymedia write outside its output root."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pickle
import pytest
import torch

from conftest import CANARY, small_overrides
from raymedia import checkpoint, pipeline, storage
from raymedia.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FAST = ("eval.enabled=false",)


@pytest.fixture
def models_copy(trained_run, tmp_path):
    """A private copy of the session's published models (tests may tamper with it)."""
    src = trained_run["cfg"].output.models_uri
    dst = tmp_path / "models"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_ray_train"))
    return str(dst)


# ---------------------------------------------------------------- checkpoints

def test_published_models_have_a_registry_record_and_commits_list_their_sha256(trained_run):
    out, models = trained_run["cfg"].output.uri, trained_run["cfg"].output.models_uri
    commit = storage.read_commit(out, trained_run["day"])
    for kind in ("two_tower", "sequence"):
        uri = checkpoint.latest(models, kind)
        version = uri.rsplit("/", 1)[1]
        record = storage.read_json(f"{models}/{kind}/_versions/{version}.json")
        for name in checkpoint.FILES:
            assert record["sha256"][name] == storage.sha256(storage.read_bytes(f"{uri}/{name}"))
        if commit.model_versions[kind] == version:
            assert commit.details["models"][kind]["sha256"] == record["sha256"]


@pytest.mark.parametrize("name", ["model.pt", "model.json", "vocab.parquet"])
def test_a_tampered_checkpoint_is_rejected_naming_the_file(models_copy, name):
    uri = checkpoint.latest(models_copy, "sequence")
    path = Path(uri) / name
    data = bytearray(path.read_bytes())
    if name == "model.json":            # a plausible edit: the same JSON, one value changed
        meta = json.loads(data)
        meta["max_len"] += 1
        data = bytearray(json.dumps(meta).encode())
    else:
        data[len(data) // 2] ^= 0x01     # one flipped bit
    path.write_bytes(bytes(data))
    for load in (checkpoint.load, checkpoint.load_vocab, checkpoint.verify):
        with pytest.raises(checkpoint.TamperedCheckpoint) as e:
            load(uri)
        assert f"{uri}/{name}" in str(e.value) and "modified after it was published" in str(e.value)


def test_a_checkpoint_without_a_registry_record_is_not_loaded(models_copy):
    uri = checkpoint.latest(models_copy, "two_tower")
    os.remove(f"{models_copy}/two_tower/_versions/{uri.rsplit('/', 1)[1]}.json")
    with pytest.raises(checkpoint.TamperedCheckpoint, match="no registry record"):
        checkpoint.load(uri)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/raymedia-pwned",))


def test_weights_never_unpickle_code_even_with_a_forged_record(models_copy):
    """An attacker who can rewrite the registry too gets past the hash, not past
    ``weights_only=True``: a pickle that would run code is refused."""
    uri = checkpoint.latest(models_copy, "sequence")
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, buf)
    Path(uri, "model.pt").write_bytes(buf.getvalue())
    rec = Path(models_copy, "sequence", "_versions", uri.rsplit("/", 1)[1] + ".json")
    record = json.loads(rec.read_text())
    record["sha256"]["model.pt"] = storage.sha256(buf.getvalue())
    rec.write_text(json.dumps(record))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load(uri)
    assert not os.path.exists("/tmp/raymedia-pwned")


def test_a_run_with_a_tampered_model_fails_and_commits_nothing(trained_run, models_copy, tmp_path):
    uri = checkpoint.latest(models_copy, "sequence")
    with open(f"{uri}/model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    out = str(tmp_path / "scores")
    cfg = pipeline_config(trained_run, f"output.uri={out}", f"output.models_uri={models_copy}", *FAST)
    with pytest.raises(checkpoint.TamperedCheckpoint, match="model.pt"):
        pipeline.run_day(cfg, trained_run["day"], train_models=False)
    assert storage.read_commit(out, trained_run["day"]) is None


def pipeline_config(trained_run, *extra):
    from raymedia import config
    return config.load(None, small_overrides(trained_run["root"], *extra))


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("bad", ["2026-02-30", "../../etc", "2026-01-01/../..", "20260101",
                                 "2026-01-01\x00", "/tmp/x", ""])
def test_dates_must_be_real_dates(bad, tmp_path):
    with pytest.raises(storage.StorageError, match="not a date"):
        storage.partition(str(tmp_path), bad)


@pytest.mark.parametrize("bad", ["../../escape", "a/../../b", "/abs", "..", ".hidden", "run id",
                                 "x" * 65, "ok\nnewline", ""])
def test_crafted_run_ids_cannot_escape_the_output_root(bad, tmp_path):
    out = tmp_path / "root" / "scores"
    with pytest.raises(storage.StorageError, match="invalid run id"):
        storage.run_path(str(out), "2026-01-10", bad)
    c = storage.Commit(dt="2026-01-10", run_id=bad, files={}, rows={}, model_versions={},
                       input_partitions=[], config_hash="h", created_at="now")
    with pytest.raises(storage.StorageError):
        storage.commit(str(out), c, base_generation=0)
    assert list(tmp_path.rglob("*")) == []               # nothing was written anywhere


def test_a_run_with_a_crafted_run_id_writes_nothing(trained_run, tmp_path):
    out = tmp_path / "root" / "scores"
    cfg = pipeline_config(trained_run, f"output.uri={out}",
                          f"output.models_uri={trained_run['cfg'].output.models_uri}", *FAST)
    with pytest.raises(storage.StorageError, match="invalid run id"):
        pipeline.run_day(cfg, trained_run["day"], train_models=False, run_id="../../../escape")
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.parent.glob("escape*"))


def test_commit_file_names_stay_inside_the_run(tmp_path):
    c = storage.Commit(dt="2026-01-10", run_id="r1", files={"recommendations": ["../../../etc/passwd"]},
                       rows={}, model_versions={}, input_partitions=[], config_hash="h", created_at="now")
    with pytest.raises(storage.StorageError, match="relative path inside its root"):
        storage.commit(str(tmp_path), c, base_generation=0)
    other = storage.Commit(**{**c.__dict__, "files": {"recommendations": ["run=other/x.parquet"]}})
    with pytest.raises(storage.StorageError, match="not one of its own files"):
        storage.commit(str(tmp_path), other, base_generation=0)
    # a reader never follows a crafted commit outside the day either
    with pytest.raises(storage.StorageError):
        c.uris(str(tmp_path), "recommendations")


@pytest.mark.parametrize("version", ["../../../tmp/evil", "/etc", "a/b", "..", ""])
def test_model_versions_are_one_safe_path_component(models_copy, version):
    with pytest.raises(storage.StorageError, match="invalid model version"):
        checkpoint.version_uri(models_copy, "sequence", version)
    latest = Path(models_copy, "sequence", "LATEST.json")
    latest.write_text(json.dumps({"version": version}))
    with pytest.raises(storage.StorageError, match="invalid model version"):
        checkpoint.latest(models_copy, "sequence")


def test_cli_refuses_impossible_dates_before_doing_anything(tmp_path):
    r = subprocess.run([sys.executable, "-m", "raymedia.cli", "score", "--date", "2026-02-30",
                        "--set", f"output.uri={tmp_path}/out"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "not a date (YYYY-MM-DD): '2026-02-30'" in r.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- config is data

_FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_METHODS = {("importlib", "import_module"), ("yaml", "load"), ("yaml", "unsafe_load"),
                      ("yaml", "full_load"), ("os", "system"), ("subprocess", "call")}


def test_no_code_is_ever_built_from_strings_and_nothing_is_unpickled():
    """Config and inputs are data only: no eval/exec/dynamic import, no pickle, no
    yaml.load, and every torch.load passes weights_only=True."""
    problems = []
    for path in sorted((ROOT / "raymedia").rglob("*.py")) + sorted((ROOT / "jobs").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve")
                       for n in names):
                    problems.append(f"{path}:{node.lineno} imports a pickle module")
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
            if (isinstance(fn, ast.Name) and name in _FORBIDDEN_BUILTINS) or (owner, name) in _FORBIDDEN_METHODS:
                problems.append(f"{path}:{node.lineno} calls {owner + '.' if owner else ''}{name}")
            if owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{path}:{node.lineno} torch.load without weights_only=True")
    assert not problems, problems


# ---------------------------------------------------------------- secrets

@pytest.mark.parametrize("override", [
    f"output.uri=s3://AKIAEXAMPLE:{CANARY}@raymedia/x",
    f"data.events_uri=s3://user:{CANARY}@raymedia/events",
    f"storage.endpoint_url=http://admin:{CANARY}@127.0.0.1:9000",
])
def test_credentials_in_config_are_refused_without_echoing_them(override):
    from raymedia import config
    with pytest.raises(ConfigError) as e:
        config.load(None, [override])
    assert CANARY not in str(e.value) and "***@" in str(e.value)
    assert override.split("=", 1)[0] in str(e.value)


def test_storage_refuses_uris_with_credentials_without_echoing_them():
    with pytest.raises(storage.StorageError) as e:
        storage.resolve(f"s3://AKIAEXAMPLE:{CANARY}@raymedia/x")
    assert CANARY not in str(e.value) and e.value.__context__ is None and e.value.__cause__ is None


def _scan(root: Path) -> list[str]:
    """Files under root whose bytes contain the canary."""
    needle = CANARY.encode()
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                hits.append(str(p))
        except OSError:
            pass
    return hits


def test_the_secret_key_appears_in_no_log_commit_report_or_error(trained_run, s3, tmp_path):
    """A real run on S3 whose secret key is the canary (the session's S3 server runs with
    it): the CLI's stdout/stderr, every Ray log of the session, every object the run wrote
    (commit, metrics, summary, rejects, outputs), the model registry and the errors of
    failing runs must not contain it."""
    import pyarrow.fs as pafs
    import ray
    import s3fs
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY
    base = "s3://raymedia/canary"
    fs, _ = storage.resolve(base)
    for sub in ("events", "catalog"):
        pafs.copy_files(f"{trained_run['root']}/{sub}", f"raymedia/canary/{sub}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    models = str(tmp_path / "models")
    shutil.copytree(trained_run["cfg"].output.models_uri, models,
                    ignore=shutil.ignore_patterns("_ray_train"))
    sets = small_overrides(base, f"output.models_uri={models}",
                           f"ray.address={ray.get_runtime_context().gcs_address}",
                           f"storage.endpoint_url={s3.endpoint_url}", "storage.region=us-east-1")
    day = trained_run["day"].isoformat()

    def cli(*extra):
        args = [sys.executable, "-m", "raymedia.cli", "score", "--date", day,
                *[a for s in (*sets, *extra) for a in ("--set", s)]]
        return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)

    ok = cli()
    assert ok.returncode == 0, ok.stderr[-3000:]
    commit = storage.read_commit(f"{base}/scores", day)
    assert commit.rows["recommendations"] > 1000 and commit.files.get("metrics")
    failures = [cli(f"output.uri=s3://AKIAEXAMPLE:{CANARY}@raymedia/x"),    # credentials in a URI
                cli("output.uri=s3://x/scores")]        # a storage error (invalid bucket)
    assert [f.returncode for f in failures] == [2, 2]
    for r in (ok, *failures):
        assert CANARY not in r.stdout + r.stderr
    assert "***@" in failures[0].stderr and "not writable" in failures[1].stderr

    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    assert not _scan(session_dir / "logs"), "the secret is in Ray's logs"
    assert not _scan(Path(models)), "the secret is in the model registry"
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    written = [p for p in s3.find("raymedia/canary/scores")]
    assert any(p.endswith("_COMMIT.json") for p in written) and any("metrics.json" in p for p in written)
    leaked = [p for p in written if CANARY.encode() in s3.cat_file(p)]
    assert not leaked, leaked
