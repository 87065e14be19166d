"""The cluster image runs the job, proved without Docker.

A venv stands in for the base image: it holds only what rayproject/ray:<ver>-py311-gpu
holds, Python 3.11 with `ray[all]` at the pinned version (ray-project/ray's
docker/ray/Dockerfile installs the wheel with the `all` extra; the image has no torch).
Then the Dockerfile's own steps run in it, read from the Dockerfile (WORKDIR, COPY and the
RUN pip lines, build arguments expanded), and `jobs/nightly.py` runs on a tiny world with
that interpreter. A dependency the Dockerfile forgets fails the run.

What differs from an image build, none of it changing which packages end up installed:
- ``TORCH_PIP_ARGS`` is empty, so torch comes from the same place as `make install` takes it
  (this machine's pip configuration: the CPU wheel), not from the CUDA index; the pinned
  version is the Dockerfile's.
- pip is the project venv's own (``pip --python <venv>``), so the venv is made without one
  (no ensurepip), and every install runs with ``--no-compile``: no bytecode is precompiled
  for the thousands of modules of ray[all] and torch (Python compiles what the job imports).
- pip's cache is its default one, so `ray[all]`'s wheels come from the cache `make install`
  just filled where they are the same files. A wheel cache holds downloads, not installed
  packages: the venv still holds only what is installed into it here (the last assertion
  checks that raymedia, torch and ray are imported from it). The Dockerfile's RUN lines keep
  their ``--no-cache-dir``, so its steps download and build as in an image build.
- The tiny world is generated in this process (it is the job's input, not part of the image).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from raymedia.data.generate import GeneratorConfig, generate

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE_HOLDS = f"ray[all]=={ray.__version__}"
BUILD_ARGS = {"TORCH_PIP_ARGS": ""}        # torch: the CPU wheel here (see above)


def dockerfile_steps(text: str, build_args: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(instruction, arguments) of each Dockerfile line after FROM, ARGs expanded."""
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, shlex.split(default)[0] if default else "")
            continue
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest)
        steps.append((op, shlex.split(rest)))
    return steps


def install_like_the_image(venv: Path, home: Path, env: dict) -> Path:
    """Apply the Dockerfile's steps to ``venv``; return the image's WORKDIR (under ``home``)."""
    steps = dockerfile_steps((ROOT / "Dockerfile").read_text(), BUILD_ARGS)
    assert steps[0][0] == "FROM" and steps[0][1] == [f"rayproject/ray:{ray.__version__}-py311-gpu"]
    workdir = home / "home" / "ray"          # the base image's WORKDIR ($HOME of user ray)
    workdir.mkdir(parents=True)
    for op, argv in steps[1:]:
        if op == "WORKDIR":
            workdir = home / argv[0].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *srcs, dst = [a for a in argv if not a.startswith("--")]
            target = workdir / dst
            for src in srcs:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"),
                                    dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target / path.name)
        elif op == "RUN":
            assert argv[:2] == ["pip", "install"], f"teach this test the Dockerfile step: RUN {argv}"
            pip_install(venv, argv[2:], env, cwd=workdir)
        else:
            raise AssertionError(f"teach this test the Dockerfile instruction {op}")
    return workdir


def pip_install(venv: Path, args: list[str], env: dict, cwd: Path | None = None) -> None:
    """``pip install --no-compile ARGS`` into ``venv`` (with the project venv's pip)."""
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-compile", *args], cwd=cwd, env=env, check=True, timeout=900)


def clean_env() -> dict:
    """This environment without what points at this checkout or the project's venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS") and not k.startswith("PYTEST")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run_nightly(venv: Path, workdir: Path, tmp_path: Path, env: dict) -> None:
    """The image's jobs/nightly.py on a tiny generated world, with the venv's interpreter."""
    python, world = str(venv / "bin" / "python"), tmp_path / "world"
    run = lambda *argv: subprocess.run([python, *argv], cwd=tmp_path, env=env,   # noqa: E731
                                       capture_output=True, text=True, timeout=900)
    generate(GeneratorConfig(users=150, items=60, days=6), str(world))
    day = dt.date(2026, 1, 5) + dt.timedelta(days=6)
    overrides = [f"data.events_uri={world}/events", f"data.catalog_uri={world}/catalog",
                 f"output.uri={world}/scores", f"output.models_uri={world}/models",
                 "data.lookback_days=6", "data.history_len=10", "train.epochs=1", "train.batch_size=32",
                 "two_tower.dim=8", "two_tower.hidden=8", "sequence.dim=8", "sequence.layers=1",
                 "score.top_k=5", "ray.address=local", "ray.num_cpus=2", "ray.progress_bars=false"]
    job = run(str(workdir / "jobs" / "nightly.py"), "--date", str(day),
              *[a for o in overrides for a in ("--set", o)])
    assert job.returncode == 0, job.stderr[-5000:]
    summary = json.loads(job.stdout[job.stdout.index("{"):])
    assert summary["dt"] == str(day) and summary["counts"]["users_scored"] > 100
    assert (world / "scores" / f"dt={day}" / "_COMMIT.json").is_file()
    # the job ran on the venv's packages, not on this checkout or the project's venv
    where = run("-c", "import importlib.util as u; print([u.find_spec(m).origin for m in ('raymedia', 'torch', 'ray')])")
    assert where.stdout.count(str(venv)) == 3, where.stdout + where.stderr


# installs ray[all] and torch, then runs a job: about 5 minutes, so it has its own target
# (`make test-image`, run by .ci/run after `make test`); the limit leaves room for a busy machine
@pytest.mark.image
@pytest.mark.timeout(1800)
def test_the_dockerfile_installs_everything_the_nightly_job_needs(tmp_path):
    env = clean_env()
    venv = tmp_path / "image-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip_install(venv, [BASE_IMAGE_HOLDS], env)
    workdir = install_like_the_image(venv, tmp_path / "image", env)
    run_nightly(venv, workdir, tmp_path, env)
