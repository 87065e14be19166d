"""Deployment files: the cluster-launcher config against the schema inside the ray wheel,
the KubeRay RayJob's required fields, and the environment configs load as typed config."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from raymedia import config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    images = {cluster["docker"]["image"], cluster["docker"]["head_image"]}
    assert {img.split(":")[1].split("-")[0] for img in images} == {ray.__version__}
    assert cluster["docker"]["image"].endswith("-py311-gpu")
    workers = cluster["available_node_types"]
    assert workers["gpu_worker"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert workers["head"]["resources"] == {"CPU": 0}


def test_kuberay_rayjob_has_its_required_fields():
    job = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/nightly.py --date")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_environment_configs_load():
    local = config.load(str(ROOT / "configs" / "local.yaml"))
    cluster = config.load(str(ROOT / "configs" / "cluster.yaml"))
    assert local.output.uri.startswith("out/") and cluster.output.uri.startswith("s3://")
    assert cluster.score.concurrency == cluster.train.num_workers
