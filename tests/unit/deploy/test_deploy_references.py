"""Everything the deploy files name exists in the code: entrypoints, `python -m` modules, CLI subcommands,
config files (and they load), ports (equal to what the service binds), probe targets, volumes, images,
and the custom Ray resources / GPU counts that configs/grpo_cluster.yaml asks the cluster for."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/app"
"""Where the Dockerfiles put the repository inside the image (``WORKDIR /app``, ``COPY . /app``)."""

IMAGES = {"flywheel-rl:cpu": DEPLOY / "Dockerfile.cpu", "flywheel-rl:gpu": DEPLOY / "Dockerfile.gpu"}
"""Image name used in the manifests -> the Dockerfile that builds it."""


# ---- helpers ---------------------------------------------------------------------------------------
def repo_path(image_path: str) -> Path | None:
    """The checkout path of an in-image path under ``/app`` (None for paths outside the image's code)."""
    if image_path == IMAGE_ROOT or image_path.startswith(IMAGE_ROOT + "/"):
        return REPO / image_path[len(IMAGE_ROOT):].lstrip("/")
    return None


def containers(doc: dict) -> list[dict]:
    """Containers of every pod template inside a manifest object."""
    spec = doc["spec"]
    if doc["kind"] == "Deployment":
        templates = [spec["template"]]
    elif doc["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    elif doc["kind"] == "RayJob":
        templates = [t for t in [spec.get("submitterPodTemplate")] if t]
    else:
        templates = []
    return [c for t in templates for c in t["spec"]["containers"]]


def cli_config(argv: list[str]):
    """Parse ``argv`` as the ``flywheel`` CLI would and load the subcommand's typed config.

    Skips (naming the issue) while the subcommand's modules are not written yet."""
    from services import cli
    from services.config import load_config

    args, rest = cli.build_parser().parse_known_args(argv)
    assert args.command in cli.COMMANDS, f"`flywheel {args.command}` is not a subcommand"
    cmd = cli.COMMANDS[args.command]
    path = cli._default_path(cmd.default_config)
    if args.config:
        local = repo_path(args.config)
        assert local is not None, f"--config {args.config} is not inside the image's /app"
        assert local.is_file(), f"--config {args.config}: {local} does not exist"
        path = str(local)
    return cmd, load_config(cli._resolve(cmd.config), path, rest)


def command_for_module(module: str) -> str:
    """The CLI subcommand whose runner lives in ``module`` (``services.grpo_job`` -> ``grpo``)."""
    from services import cli

    names = [n for n, c in cli.COMMANDS.items() if c.run.partition(":")[0] == module]
    assert names, f"`python -m {module}` is no CLI job's entrypoint"
    return names[0]


def fields_named(model: BaseModel, pred) -> dict[str, object]:
    """Dotted name -> value of every (nested) config field whose name satisfies ``pred``."""
    out: dict[str, object] = {}
    for name, value in model:
        if isinstance(value, BaseModel):
            out.update({f"{name}.{k}": v for k, v in fields_named(value, pred).items()})
        elif pred(name):
            out[name] = value
    return out


def ray_custom_resources(start_params: dict[str, str]) -> dict[str, float]:
    """KubeRay's ``rayStartParams.resources``: a quoted JSON object, e.g. ``'"{\\"rollout_node\\": 1}"'``."""
    raw = start_params.get("resources")
    if raw is None:
        return {}
    return json.loads(raw.strip().strip("'").strip('"').replace('\\"', '"'))


def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity (``"4"``, ``"500m"``) as a number."""
    s = str(value)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


# ---- the GRPO RayJob --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rayjob(by_kind) -> dict:
    jobs = by_kind.get("RayJob", [])
    assert len(jobs) == 1, "expected one RayJob (the GRPO job)"
    return jobs[0]


@pytest.fixture(scope="module")
def job_entrypoint(rayjob) -> list[str]:
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], f"entrypoint should be `python -m MODULE ...`, got {argv[:3]}"
    return argv


def test_rayjob_entrypoint_module_exists_and_is_runnable(job_entrypoint):
    module = job_entrypoint[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"`python -m {module}`: module not importable"
    assert 'if __name__ == "__main__"' in Path(spec.origin).read_text(), f"{module} has no __main__ block"


@pytest.fixture(scope="module")
def job_config(job_entrypoint):
    """The GRPO job config exactly as the RayJob's entrypoint loads it."""
    name = command_for_module(job_entrypoint[2])
    _, cfg = cli_config([name, *job_entrypoint[3:]])
    return cfg


def test_rayjob_config_is_the_scaled_out_gpu_config(job_config):
    assert job_config.rollout.weight_transport == "collective", "the cluster config should broadcast the weights"
    assert job_config.learner.device == "cuda"
    assert job_config.learner.world_size >= 2 and job_config.rollout.num_workers >= 2
    for stage in job_config.stages:  # vLLM's max_model_len follows the longest stage
        assert job_config.max_prompt_tokens + stage.max_response_tokens <= 1_048_576


def test_rayjob_targets_the_raycluster(rayjob, by_kind):
    names = {c["metadata"]["name"] for c in by_kind["RayCluster"]}
    selector = rayjob["spec"].get("clusterSelector")
    if selector:
        assert selector.get("ray.io/cluster") in names, f"clusterSelector {selector} matches no RayCluster {names}"
    else:
        assert "rayClusterSpec" in rayjob["spec"]


def test_placement_pins_each_role_to_its_nodes(job_config):
    """The job's placement-group bundles take CPUs/GPUs from the component configs and custom resources from
    ``resources.learner_custom`` / ``rollout.resources_per_worker``: both must be set for a cluster."""
    ro = job_config.rollout
    assert ro.num_gpus_per_worker >= ro.tensor_parallel_size
    assert ro.resources_per_worker, "rollout.resources_per_worker is empty: workers could land on learner GPUs"
    assert job_config.resources.learner_custom, "resources.learner_custom is empty"
    assert set(ro.resources_per_worker).isdisjoint(job_config.resources.learner_custom)


def _groups_of_raycluster(doc: dict) -> list[dict]:
    """Per node group: replicas, GPUs and CPUs per pod (from the container limits), custom resources."""
    out = []
    for g in [doc["spec"]["headGroupSpec"]] + doc["spec"].get("workerGroupSpecs", []):
        limits = g["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        params = g["rayStartParams"]
        gpus = quantity(limits.get("nvidia.com/gpu", 0))
        assert quantity(params.get("num-gpus", gpus)) == gpus, \
            f"group {g.get('groupName', 'head')}: rayStartParams num-gpus != nvidia.com/gpu limit"
        out.append({"name": g.get("groupName", "head"), "replicas": g.get("replicas", 1), "gpus": gpus,
                    "cpus": quantity(params.get("num-cpus", limits.get("cpu", 0))),
                    "custom": ray_custom_resources(params)})
    return out


def _groups_of_ray_up(cfg: dict) -> list[dict]:
    return [{"name": n, "replicas": t.get("min_workers", 1), "gpus": t["resources"].get("GPU", 0),
             "cpus": t["resources"].get("CPU", 0),
             "custom": {k: v for k, v in t["resources"].items() if k not in ("CPU", "GPU", "memory")}}
            for n, t in cfg["available_node_types"].items()]


def _assert_role_fits(groups, role, count, custom, gpus_each, cpus_each):
    """``count`` actors of a role, each needing ``custom``/``gpus_each``/``cpus_each``, fit the groups that
    advertise the role's custom resources (so they can land nowhere else)."""
    assert custom, f"{role}: no custom resources, so nothing pins the {role} to its nodes"
    hosts = [g for g in groups if all(k in g["custom"] for k in custom)]
    assert hosts, f"{role}: no node group advertises {sorted(custom)}; groups: {[g['custom'] for g in groups]}"
    fit = 0
    for g in hosts:
        per_node = min([int(g["custom"][k] // v) for k, v in custom.items()]
                       + ([int(g["gpus"] // gpus_each)] if gpus_each else [])
                       + ([int(g["cpus"] // cpus_each)] if cpus_each else []))
        fit += per_node * g["replicas"]
    assert fit >= count, f"{role}: {count} actors requested, the {[g['name'] for g in hosts]} groups hold {fit}"


@pytest.mark.parametrize("where", ["kuberay", "ray-up"])
def test_cluster_provides_what_the_job_config_places(where, job_config, by_kind):
    if where == "kuberay":
        groups = _groups_of_raycluster(by_kind["RayCluster"][0])
    else:
        groups = _groups_of_ray_up(yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text()))
    r, le, ro = job_config.resources, job_config.learner, job_config.rollout
    _assert_role_fits(groups, "learner", le.world_size, r.learner_custom, 1.0 if le.device == "cuda" else 0.0,
                      le.num_cpus_per_rank)
    _assert_role_fits(groups, "rollout", ro.num_workers, ro.resources_per_worker, ro.num_gpus_per_worker,
                      ro.num_cpus_per_worker)
    # rollout and learner nodes are disjoint: a GPU is never shared by vLLM and FSDP
    pinned = set(r.learner_custom) | set(ro.resources_per_worker)
    assert all(len(set(g["custom"]) & pinned) <= 1 for g in groups), [g["custom"] for g in groups]
    assert sum(g["cpus"] * g["replicas"] for g in groups if not g["gpus"]) >= r.verifier_actors * r.verifier_cpus


def test_fit_check_catches_an_undersized_cluster():
    groups = [{"name": "learner-gpu", "replicas": 1, "gpus": 4, "cpus": 32, "custom": {"learner_node": 4}}]
    _assert_role_fits(groups, "learner", 4, {"learner_node": 1}, 1.0, 8)
    for count, gpus, cpus in [(5, 1.0, 8), (4, 2.0, 8), (4, 1.0, 16)]:
        with pytest.raises(AssertionError):
            _assert_role_fits(groups, "learner", count, {"learner_node": 1}, gpus, cpus)
    with pytest.raises(AssertionError, match="no node group advertises"):
        _assert_role_fits(groups, "rollout", 1, {"rollout_node": 1}, 1.0, 1)


# ---- Deployments / Services ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployments(by_kind):
    deps = by_kind.get("Deployment", [])
    subcommands = {shlex.join(c["command"][:2]) for d in deps for c in containers(d)}
    assert {"flywheel serve-reward", "flywheel serve-rollout"} <= subcommands, subcommands
    return deps


@pytest.mark.parametrize("sub", ["serve-reward", "serve-rollout"])
def test_service_command_config_ports_and_host_match_the_code(sub, deployments):
    dep = next(d for d in deployments if containers(d)[0]["command"][1] == sub)
    c = containers(dep)[0]
    assert c["command"][0] == "flywheel"
    _, cfg = cli_config(c["command"][1:])
    ports = {v for v in fields_named(cfg, lambda n: n.endswith("port")).values() if isinstance(v, int) and v}
    declared = {p["containerPort"] for p in c["ports"]}
    assert declared == ports, f"{sub}: container ports {declared} != ports the service binds {ports}"
    hosts = fields_named(cfg, lambda n: n == "host" or n.endswith("_host"))
    assert hosts and all(h == "0.0.0.0" for h in hosts.values()), \
        f"{sub}: binds {hosts}; inside a pod it must listen on 0.0.0.0 to be reachable"


@pytest.mark.parametrize("sub", ["serve-reward", "serve-rollout"])
def test_probes_target_a_declared_port_and_a_served_path(sub, deployments):
    from services import cli

    dep = next(d for d in deployments if containers(d)[0]["command"][1] == sub)
    c = containers(dep)[0]
    names = {p.get("name") for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
    assert {"readinessProbe", "livenessProbe"} <= set(probes), f"{sub}: needs readiness and liveness probes"
    cmd = cli.COMMANDS[sub]
    module = cmd.run.partition(":")[0]
    sources = "".join(p.read_text() for p in (REPO / "services").glob("*.py")
                      if p.stem.startswith(module.rsplit(".", 1)[-1].split("_")[0]))
    for kind, probe in probes.items():
        http = probe["httpGet"]
        assert http["port"] in names, f"{sub} {kind}: port {http['port']} is not a container port"
        assert f'"{http["path"]}"' in sources, f"{sub} {kind}: no route {http['path']} in services/{module}*"


def test_services_select_deployments_and_target_their_ports(by_kind):
    deps = by_kind.get("Deployment", [])
    for svc in by_kind.get("Service", []):
        sel = svc["spec"]["selector"]
        matches = [d for d in deps if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        dep = matches[0]
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        cports = {p.get("name"): p["containerPort"] for c in containers(dep) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in cports or target in cports.values(), f"{svc['metadata']['name']}: {target}"
            assert cports.get(target, target) == p["port"], "Service port and container port should agree"


# ---- images, volumes --------------------------------------------------------------------------------
def test_images_come_from_our_dockerfiles_and_gpu_pods_use_the_gpu_image(manifests):
    ray_up = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert ray_up["docker"]["image"] in IMAGES
    for path, doc in manifests:
        for c in containers(doc):
            assert c["image"] in IMAGES, f"{path.name}: image {c['image']} is built by no deploy/Dockerfile.*"
            assert IMAGES[c["image"]].is_file()
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if gpus:
                assert c["image"].endswith(":gpu"), f"{path.name}: GPU container {c['name']} needs the GPU image"


def test_every_claimed_volume_is_declared(manifests, by_kind):
    claims = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
    for path, doc in manifests:
        for vol in _volumes(doc):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, f"{path.name}: {vol}"


def _volumes(doc):
    spec = doc["spec"]
    if doc["kind"] == "Deployment":
        return spec["template"]["spec"].get("volumes", [])
    if doc["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
        return [v for g in groups for v in g["template"]["spec"].get("volumes", [])]
    return []


def test_paths_inside_the_image_exist_in_the_repo(manifests):
    """Any /app/... path a manifest names (configs, scripts) ships in the image."""
    for path, doc in manifests:
        for token in shlex.split(yaml.safe_dump(doc).replace("'", " ")):
            local = repo_path(token.strip(",:"))
            if local is not None:
                assert local.exists(), f"{path.name} names {token}, which is not in the repository"
