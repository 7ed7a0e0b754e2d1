"""Validate Flywheel's Kubernetes manifests offline, against the JSON Schemas shipped in deploy/schemas/.

    python deploy/validate_manifests.py                  # every YAML under deploy/k8s/
    python deploy/validate_manifests.py my-cluster.yaml  # your edited copies

Kubernetes kinds (Deployment, Service, PersistentVolumeClaim, and the PodTemplateSpec inside KubeRay
objects) use the strict schemas of Kubernetes 1.33 taken from `kubernetes-validate`; RayCluster and
RayJob use schemas written from KubeRay's v1 Go types (see deploy/schemas/README.md). Nothing is
downloaded. Exit status 1 when any document fails, with one line per error naming file, object and path.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
SCHEMAS = DEPLOY / "schemas"
SCHEMA_FILES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "k8s/deployment-apps-v1.json",
    ("v1", "Service"): "k8s/service-v1.json",
    ("v1", "PersistentVolumeClaim"): "k8s/persistentvolumeclaim-v1.json",
    ("ray.io/v1", "RayCluster"): "kuberay/raycluster-ray-v1.json",
    ("ray.io/v1", "RayJob"): "kuberay/rayjob-ray-v1.json",
}
"""(apiVersion, kind) -> schema file under deploy/schemas/."""


def load_documents(path: str | Path) -> list[dict]:
    """The non-empty YAML documents of a manifest file (``---``-separated)."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            raise ValueError(f"{path}: document {i} is not a Kubernetes object (no apiVersion/kind)")
    return docs


@functools.cache
def _registry():
    from referencing import Registry, Resource

    def retrieve(uri: str) -> Resource:
        if not uri.startswith("file://"):
            raise LookupError(f"refusing to fetch {uri}: schemas must be local")
        return Resource.from_contents(json.loads(Path(uri[len("file://"):]).read_text()))

    return Registry(retrieve=retrieve)


@functools.cache
def validator_for(api_version: str, kind: str):
    """A Draft 2020-12 validator for one (apiVersion, kind); ``$ref``s resolve to files in deploy/schemas/."""
    from jsonschema import Draft202012Validator

    rel = SCHEMA_FILES.get((api_version, kind))
    if rel is None:
        known = ", ".join(f"{k} ({a})" for a, k in SCHEMA_FILES)
        raise KeyError(f"no schema for kind {kind} ({api_version}); known: {known}")
    return Draft202012Validator({"$ref": (SCHEMAS / rel).as_uri()}, registry=_registry())


def validate_document(doc: dict) -> list[str]:
    """Schema errors of one manifest object, each as ``path: message`` (empty when valid)."""
    validator = validator_for(doc["apiVersion"], doc["kind"])
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {_short(e)}" for e in errors]


def _short(error) -> str:
    """The most specific message: for anyOf/oneOf failures, the deepest sub-error."""
    best = error
    while best.context:
        best = max(best.context, key=lambda e: len(e.absolute_path))
    msg = best.message
    return msg if len(msg) < 300 else msg[:300] + "..."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = [Path(p) for p in argv] or sorted((DEPLOY / "k8s").glob("*.yaml"))
    failed = 0
    for path in paths:
        for doc in load_documents(path):
            name = f"{path}: {doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
            errors = validate_document(doc)
            failed += bool(errors)
            print(f"{'FAIL' if errors else 'ok  '} {name}")
            for err in errors:
                print(f"     {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
