"""Contract tests for the JSON Schemas in ``schemas/`` and their examples.

Adding ``schemas/examples/<name>/valid-*.json`` or ``invalid-*.json`` adds a test case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry

REPO = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = REPO / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
SCHEMA_BASE = "https://traverz.dev/schemas/"
DRAFT7 = "http://json-schema.org/draft-07/schema#"

SCHEMA_NAMES = sorted(
    p.name.removesuffix(".schema.json") for p in SCHEMAS_DIR.glob("*.schema.json")
)
EXPECTED_SCHEMAS = {
    "ping",
    "ping_batch_request",
    "ping_record",
    "report_request",
    "vote_request",
    "report_record",
    "condition",
    "alert",
    "deadletter",
    "ws_client_message",
    "ws_server_message",
}
# What consumers outside the backend see: never a device identifier.
PUBLIC_SCHEMAS = ("condition", "alert", "ws_server_message")


def _examples(kind: str) -> list[Any]:
    return [
        pytest.param(path, id=f"{path.parent.name}/{path.stem}")
        for path in sorted(EXAMPLES_DIR.glob(f"*/{kind}-*.json"))
    ]


def _validator(
    schema_name: str, schemas: dict[str, Any], registry: Registry[Any]
) -> Draft7Validator:
    return Draft7Validator(schemas[schema_name], registry=registry)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _refs(node: Any) -> Iterator[str]:
    for key, value in _walk(node):
        if key == "$ref" and isinstance(value, str):
            yield value


# -- the set of schemas -------------------------------------------------------------------


def test_every_expected_schema_exists() -> None:
    assert set(SCHEMA_NAMES) == EXPECTED_SCHEMAS


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft7(name: str, schemas: dict[str, Any]) -> None:
    schema = schemas[name]
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT7
    assert schema["$id"] == f"{SCHEMA_BASE}{name}.schema.json"
    assert schema.get("title") and schema.get("description")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_is_described(name: str, schemas: dict[str, Any]) -> None:
    missing = []
    for key, value in _walk(schemas[name]):
        if key != "properties" or not isinstance(value, dict):
            continue
        for prop, sub in value.items():
            if isinstance(sub, dict) and "$ref" not in sub and not sub.get("description"):
                missing.append(prop)
    assert not missing, f"{name}: properties without a description: {missing}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_objects_are_closed(name: str, schemas: dict[str, Any]) -> None:
    """Every object schema that lists properties forbids the others."""
    open_objects = [
        sorted(node["properties"])
        for node in _iter_subschemas(schemas[name])
        if "properties" in node and node.get("additionalProperties") is not False
    ]
    assert not open_objects, f"{name}: objects allowing extra properties: {open_objects}"


def _iter_subschemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key in {"properties", "definitions", "patternProperties"} and isinstance(
                value, dict
            ):
                for sub in value.values():
                    yield from _iter_subschemas(sub)
            elif key in {"items", "additionalItems", "not", "if", "then", "else"}:
                yield from _iter_subschemas(value)
            elif key in {"allOf", "anyOf", "oneOf"}:
                for sub in value:
                    yield from _iter_subschemas(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _iter_subschemas(sub)


# -- references resolve offline -----------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_refs_resolve_offline(name: str, schemas: dict[str, Any], registry: Registry[Any]) -> None:
    schema = schemas[name]
    resolver = registry.resolver(base_uri=schema["$id"])
    for ref in _refs(schema):
        assert not ref.startswith(("http:", "https:")), f"{name}: absolute $ref {ref}"
        resolved = resolver.lookup(ref)
        assert isinstance(resolved.contents, dict), f"{name}: {ref} resolved to a non-schema"


def test_unknown_ref_is_not_fetched(registry: Registry[Any]) -> None:
    """The registry refuses to retrieve: a dangling ref fails instead of going online."""
    from referencing.exceptions import Unresolvable

    resolver = registry.resolver(base_uri=f"{SCHEMA_BASE}ping.schema.json")
    with pytest.raises(Unresolvable):
        resolver.lookup("nonexistent.schema.json")


# -- examples -----------------------------------------------------------------------------


def test_every_schema_has_examples() -> None:
    dirs = {p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()}
    assert dirs == set(SCHEMA_NAMES), "schemas/examples/<name>/ must match the schema files"
    for name in SCHEMA_NAMES:
        valid = list((EXAMPLES_DIR / name).glob("valid-*.json"))
        invalid = list((EXAMPLES_DIR / name).glob("invalid-*.json"))
        assert len(valid) >= 2, f"{name}: needs 2+ valid examples"
        assert len(invalid) >= 2, f"{name}: needs 2+ invalid examples"
        stray = {p.name for p in (EXAMPLES_DIR / name).iterdir()} - {
            p.name for p in valid + invalid
        }
        assert not stray, f"{name}: example files must be valid-*.json or invalid-*.json: {stray}"


@pytest.mark.parametrize("path", _examples("valid"))
def test_valid_example(path: Path, schemas: dict[str, Any], registry: Registry[Any]) -> None:
    validator = _validator(path.parent.name, schemas, registry)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_load(path))]
    assert not errors, errors


@pytest.mark.parametrize("path", _examples("invalid"))
def test_invalid_example(path: Path, schemas: dict[str, Any], registry: Registry[Any]) -> None:
    validator = _validator(path.parent.name, schemas, registry)
    errors = list(validator.iter_errors(_load(path)))
    assert errors, f"{path.name} unexpectedly validates"
    # Each invalid example is wrong for one clear reason, not several.
    assert len(errors) == 1, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


# -- privacy: no device ids in what leaves the backend --------------------------------------


def _property_names(schema: dict[str, Any], registry: Registry[Any]) -> set[str]:
    """Names of all properties and required entries, following $refs across files."""
    names: set[str] = set()
    seen: set[int] = set()

    def visit(node: Any, resolver: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                resolved = resolver.lookup(ref)
                if id(resolved.contents) not in seen:
                    seen.add(id(resolved.contents))
                    visit(resolved.contents, resolved.resolver)
            if isinstance(node.get("properties"), dict):
                names.update(node["properties"])
            if isinstance(node.get("required"), list):
                names.update(node["required"])
            for key, value in node.items():
                if key != "$ref":
                    visit(value, resolver)
        elif isinstance(node, list):
            for item in node:
                visit(item, resolver)

    visit(schema, registry.resolver(base_uri=schema["$id"]))
    return names


@pytest.mark.parametrize("name", PUBLIC_SCHEMAS)
def test_public_schemas_have_no_device_id(
    name: str, schemas: dict[str, Any], registry: Registry[Any]
) -> None:
    names = _property_names(schemas[name], registry)
    leaking = {n for n in names if "device" in n and n != "devices"}
    assert not leaking, f"{name} exposes {leaking}"


def test_ws_server_message_embeds_condition_and_alert(
    schemas: dict[str, Any], registry: Registry[Any]
) -> None:
    """The walk above really follows refs into condition/alert (else it proves nothing)."""
    names = _property_names(schemas["ws_server_message"], registry)
    assert {"sectors", "sample_bucket", "evidence", "confidence"} <= names


def test_internal_schemas_carry_device_id(schemas: dict[str, Any], registry: Registry[Any]) -> None:
    """Sanity check of the walk: the ingest-side record does name device_id."""
    assert "device_id" in _property_names(schemas["ping_record"], registry)


# -- examples agree with H3 (the key resolutions of the topics) ------------------------------


def test_example_cells_match_positions() -> None:
    h3 = pytest.importorskip("h3")
    for path in sorted((EXAMPLES_DIR / "ping_record").glob("valid-*.json")):
        record = _load(path)
        assert h3.get_resolution(record["cell"]) == 7
        for ping in record["pings"]:
            assert h3.latlng_to_cell(ping["lat"], ping["lon"], 7) == record["cell"], path.name
    for path in sorted((EXAMPLES_DIR / "condition").glob("valid-*.json")):
        condition = _load(path)
        assert h3.get_resolution(condition["cell"]) == 9
        assert h3.latlng_to_cell(condition["lat"], condition["lon"], 9) == condition["cell"]
        for sector in condition["sectors"]:
            assert sector["heading_deg"] == sector["sector"] * 45.0
    for path in sorted((EXAMPLES_DIR / "alert").glob("valid-*.json")):
        alert = _load(path)
        assert h3.latlng_to_cell(alert["lat"], alert["lon"], 9) == alert["cell"], path.name
