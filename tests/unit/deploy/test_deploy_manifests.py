"""Every Kubernetes/KubeRay manifest in deploy/k8s/ validates against the schemas shipped in deploy/schemas/,
and those schemas really reject broken manifests (a validator that accepts anything proves nothing)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"

MANIFEST_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_validates_against_shipped_schema(path, validator_module):
    docs = validator_module.load_documents(path)
    assert docs, f"{path} holds no Kubernetes objects"
    for doc in docs:
        assert validator_module.validate_document(doc) == [], f"{path.name}: {doc['kind']} is invalid"


def test_every_kind_we_ship_has_a_schema(manifests, validator_module):
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in manifests}
    assert kinds <= set(validator_module.SCHEMA_FILES), kinds - set(validator_module.SCHEMA_FILES)
    # the required kinds are all there
    assert {"RayCluster", "RayJob", "Deployment", "Service"} <= {k for _, k in kinds}


def test_schemas_are_valid_and_local():
    from jsonschema import Draft202012Validator

    files = sorted((DEPLOY / "schemas").rglob("*.json"))
    assert len(files) >= 5
    for f in files:
        schema = json.loads(f.read_text())
        Draft202012Validator.check_schema(schema)
        refs = {v for v in _walk_refs(schema)}
        remote = {r for r in refs if r.startswith(("http:", "https:"))}
        assert not remote, f"{f.name} refers to remote schemas: {sorted(remote)[:3]}"


def _walk_refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _walk_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_refs(v)


def _first(by_kind, kind):
    assert by_kind.get(kind), f"no {kind} manifest in deploy/k8s/"
    return copy.deepcopy(by_kind[kind][0])


BREAKAGES = {
    # name: (kind, mutation, fragment expected in an error)
    "worker group field typo": ("RayCluster",
                                lambda d: d["spec"]["workerGroupSpecs"][0].update(replica=2), "replica"),
    "replicas as a string": ("RayCluster",
                             lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="2"), "replicas"),
    "worker group without pod template": ("RayCluster",
                                          lambda d: d["spec"]["workerGroupSpecs"][0].pop("template"), "template"),
    "rayStartParams value not a string": ("RayCluster",
                                          lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update(port=6379),
                                          "rayStartParams"),
    "container field typo in head pod": ("RayCluster",
                                         lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                                         .update(imagePullPolicyy="Always"), "imagePullPolicyy"),
    "unknown RayJob submission mode": ("RayJob", lambda d: d["spec"].update(submissionMode="SSHMode"),
                                       "submissionMode"),
    "RayJob without a cluster": ("RayJob", lambda d: (d["spec"].pop("clusterSelector", None),
                                                      d["spec"].pop("rayClusterSpec", None)), "spec"),
    "probe port of the wrong type": ("Deployment",
                                     lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
                                     ["httpGet"].update(port=[8000]), "readinessProbe"),
    "Deployment without selector": ("Deployment", lambda d: d["spec"].pop("selector"), "selector"),
    "Service port out of type": ("Service", lambda d: d["spec"]["ports"][0].update(port="http"), "port"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_schema_rejects_broken_manifest(name, by_kind, validator_module):
    kind, mutate, fragment = BREAKAGES[name]
    doc = _first(by_kind, kind)
    assert validator_module.validate_document(doc) == []
    mutate(doc)
    errors = validator_module.validate_document(doc)
    assert errors, f"the {kind} schema accepted a manifest with: {name}"
    assert any(fragment in e for e in errors), errors


def test_validator_script_passes_on_the_repo_and_fails_on_a_bad_file(tmp_path, by_kind):
    ok = subprocess.run([sys.executable, str(DEPLOY / "validate_manifests.py")], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _first(by_kind, "RayCluster")
    bad["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = subprocess.run([sys.executable, str(DEPLOY / "validate_manifests.py"), str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "serviceTyp" in res.stdout
