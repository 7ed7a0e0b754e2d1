"""Fixtures for the deploy/ checks: the manifests, the validator script, and mapping image paths to the repo.

Containers built from deploy/Dockerfile.* hold the repository at ``/app`` (``WORKDIR /app``, ``COPY . /app``),
so a path ``/app/X`` named in a manifest must be ``X`` in this checkout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/app"
"""Where the Dockerfiles put the repository inside the image."""


def repo_path(image_path: str) -> Path | None:
    """The checkout path of an in-image path under ``/app`` (None for paths outside the image's code)."""
    if image_path == IMAGE_ROOT or image_path.startswith(IMAGE_ROOT + "/"):
        return REPO / image_path[len(IMAGE_ROOT):].lstrip("/")
    return None


@pytest.fixture(scope="session")
def validator_module():
    """deploy/validate_manifests.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("flywheel_validate_manifests", DEPLOY / "validate_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def manifests(validator_module) -> list[tuple[Path, dict]]:
    """Every (file, document) under deploy/k8s/."""
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert files, "deploy/k8s/ has no manifests"
    return [(f, doc) for f in files for doc in validator_module.load_documents(f)]


@pytest.fixture(scope="session")
def by_kind(manifests) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for _, doc in manifests:
        out.setdefault(doc["kind"], []).append(doc)
    return out
