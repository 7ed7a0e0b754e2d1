"""deploy/ray-cluster.yaml is a config `ray up` accepts: Ray's own preparation (defaults merged for the
provider) and its own schema check (ray/autoscaler/ray-schema.json, shipped in the ray wheel)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"

RAY_UP = DEPLOY / "ray-cluster.yaml"


@pytest.fixture(scope="module")
def ray_up_config() -> dict:
    return yaml.safe_load(RAY_UP.read_text())


def _prepare_and_validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_ray_up_accepts_the_cluster_config(ray_up_config):
    prepared = _prepare_and_validate(ray_up_config)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu_types) >= 2, "expected separate rollout and learner GPU node types"
    assert any(t["resources"].get("GPU", 0) == 0 for n, t in types.items() if n != prepared["head_node_type"]), \
        "expected a CPU worker node type"


def test_ray_schema_rejects_a_broken_config(ray_up_config):
    import jsonschema

    bad = copy.deepcopy(ray_up_config)
    bad["available_node_types"]["rollout_gpu"]["min_worker"] = 4  # typo
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        _prepare_and_validate(bad)
    bad = copy.deepcopy(ray_up_config)
    bad["available_node_types"]["rollout_gpu"]["resources"]["GPU"] = -1
    with pytest.raises(jsonschema.ValidationError):
        _prepare_and_validate(bad)


def test_start_commands_use_the_image_and_ray_ports(ray_up_config):
    head = " ".join(ray_up_config["head_start_ray_commands"])
    worker = " ".join(ray_up_config["worker_start_ray_commands"])
    assert "ray start --head" in head and "--port=6379" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert ray_up_config["docker"]["image"].startswith("flywheel-rl:")
