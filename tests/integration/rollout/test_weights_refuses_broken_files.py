"""``POST /v1/weights`` refuses broken safetensors (a missing tensor, a wrong shape, an unknown tensor, a
truncated file, a bad checksum) with a 400 naming the tensor and the file, before any worker sees them:
the version and the weights being served stay as they were (greedy output unchanged)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tiny_checkpoint import perturbed_state_dict

TENSOR = "model.layers.1.mlp.up_proj.weight"


def _greedy(service) -> tuple[list[int], set[int]]:
    body = {"prompts": [{"prompt_token_ids": [5, 6, 7]}], "sampling": {"n": 1, "max_tokens": 8, "temperature": 0.0}}
    r = httpx.post(service["http"] + "/v1/rollouts", json=body, timeout=120)
    assert r.status_code == 200, r.text
    s = r.json()["groups"][0]["samples"][0]
    return s["completion_token_ids"], set(s["versions"])


def _broken_files(tiny_model: str) -> dict[str, tuple[Path, str]]:
    """kind -> (path, words the error must contain)."""
    from safetensors.torch import save_file

    root = Path(tiny_model).parent  # inside the service's weights_root
    sd = perturbed_state_dict(tiny_model, scale=0.5, seed=404)  # far from the served weights, if it got through
    out = {}

    def write(kind: str, tensors: dict, *words: str) -> Path:
        path = root / f"broken-{kind}.safetensors"
        save_file(tensors, str(path))
        out[kind] = (path, words)
        return path

    write("missing", {k: v for k, v in sd.items() if k != TENSOR}, TENSOR, "broken-missing.safetensors", "missing")
    write("shape", {**sd, TENSOR: sd[TENSOR][:-1].contiguous()}, TENSOR, "broken-shape.safetensors", "[127, 64]",
          "[128, 64]")
    write("unknown", {**sd, "model.layers.9.extra.weight": sd[TENSOR].clone()}, "model.layers.9.extra.weight",
          "broken-unknown.safetensors")
    cut = write("truncated", sd, "broken-truncated.safetensors", "not a readable safetensors")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    folder = root / "broken-folder"
    folder.mkdir(exist_ok=True)
    save_file({k: v for k, v in sd.items() if k != TENSOR}, str(folder / "model.safetensors"))
    out["folder"] = (folder, (TENSOR, "model.safetensors", "missing"))
    return out


def _sha(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def test_broken_weight_files_are_refused_and_the_old_weights_kept(service, tiny_model):
    svc = service["service"]
    url, auth = service["http"] + "/v1/weights", {"Authorization": f"Bearer {service['token']}"}
    before_tokens, before_versions = _greedy(service)
    (served,) = before_versions  # the shared worker's version: other tests push weights to it directly
    version = max(svc.version, served)  # the service refuses anything <= its own version
    svc_version = svc.version
    broken = _broken_files(tiny_model)
    for kind, (path, words) in broken.items():
        r = httpx.post(url, json={"version": version + 1, "path": str(path), "sha256": _sha(path)}, headers=auth,
                       timeout=120)
        assert r.status_code == 400, (kind, r.text)
        err = r.json()["error"]
        assert err["code"] == "bad_weights", (kind, err)
        for w in words:
            assert w in err["message"], (kind, w, err["message"])
        assert svc.version == svc_version
    good_shape = broken["shape"][0]
    r = httpx.post(url, json={"version": version + 1, "path": str(good_shape), "sha256": "0" * 64}, headers=auth,
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "checksum_mismatch"
    assert _greedy(service) == (before_tokens, {served})  # same weights, same version, still serving
    h = httpx.get(service["http"] + "/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["weight_version"] == svc_version


@pytest.mark.parametrize("path", ["/nope/model.safetensors", "config.json"])
def test_weights_that_are_not_safetensors_are_refused(service, tiny_model, path):
    full = path if path.startswith("/") else str(Path(tiny_model) / path)
    r = httpx.post(service["http"] + "/v1/weights", json={"version": 10_000, "path": full, "sha256": "0" * 64},
                   headers={"Authorization": f"Bearer {service['token']}"}, timeout=60)
    assert r.status_code in (400, 403), r.text
    assert r.json()["error"]["message"]
