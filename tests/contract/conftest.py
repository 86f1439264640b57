"""Shared fixtures for the contract tests (schemas, AsyncAPI, docker files).

The contract tests need no broker and no network: every ``$ref`` is resolved from the
files in ``schemas/`` through a ``referencing.Registry`` whose retrieval refuses to fetch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

REPO = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = REPO / "schemas"
SCHEMA_BASE = "https://traverz.dev/schemas/"

# ``import pipeline`` must work when pytest runs without the project installed.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _refuse(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)


def load_schema_files() -> dict[str, dict[str, Any]]:
    """``{name: schema}`` for every ``schemas/<name>.schema.json``."""
    return {
        path.name.removesuffix(".schema.json"): json.loads(path.read_text())
        for path in sorted(SCHEMAS_DIR.glob("*.schema.json"))
    }


def build_registry(schemas: dict[str, dict[str, Any]]) -> Registry[Any]:
    """A registry of our schemas keyed by ``$id``; anything else is unresolvable."""
    resources = [(s["$id"], Resource.from_contents(s)) for s in schemas.values()]
    return Registry(retrieve=_refuse).with_resources(resources)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def schemas() -> dict[str, dict[str, Any]]:
    return load_schema_files()


@pytest.fixture(scope="session")
def registry(schemas: dict[str, dict[str, Any]]) -> Registry[Any]:
    return build_registry(schemas)
