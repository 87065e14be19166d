"""Deployment files: the cluster-launcher config against the schema inside the ray wheel,
the KubeRay RayJob's required fields, both on the one raymedia image built from the
Dockerfile (whose base is Ray's image of the pinned version), and the environment configs
load as typed config. tests/system/test_image.py runs the Dockerfile's install steps."""

import json
import re
from pathlib import Path

import jsonschema
import ray
import yaml

from raymedia import config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_the_image_builds_from_rays_image_of_the_pinned_versions():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)$", dockerfile, re.M) == [f"rayproject/ray:{ray.__version__}-py311-gpu"]
    torch_pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f'"{torch_pin}"' in dockerfile
    assert re.search(r"^RUN pip install --no-cache-dir \.$", dockerfile, re.M)   # with its dependencies


def test_cluster_yaml_validates_against_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["docker"]["image"] == IMAGE and "head_image" not in cluster["docker"]
    assert not cluster["setup_commands"]        # the image holds everything
    workers = cluster["available_node_types"]
    assert workers["gpu_worker"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert workers["head"]["resources"] == {"CPU": 0}


def test_kuberay_rayjob_has_its_required_fields():
    job = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python /home/ray/raymedia/jobs/nightly.py --date")
    assert "runtimeEnvYAML" not in spec         # no code or packages fetched at run time
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    gpu = cluster["workerGroupSpecs"][0]
    assert head["image"] == gpu["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_environment_configs_load():
    local = config.load(str(ROOT / "configs" / "local.yaml"))
    cluster = config.load(str(ROOT / "configs" / "cluster.yaml"))
    assert local.output.uri.startswith("out/") and cluster.output.uri.startswith("s3://")
    assert cluster.score.concurrency == cluster.eval.concurrency == cluster.train.num_workers
