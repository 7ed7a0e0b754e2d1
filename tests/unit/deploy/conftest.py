"""Fixtures for the deploy/ checks: the validator script (deploy/validate_manifests.py) and the manifests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
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
