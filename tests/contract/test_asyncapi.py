"""Contract tests for ``schemas/asyncapi.yaml`` (AsyncAPI 3.0.0), fully offline.

The document is validated against the AsyncAPI 3.0.0 meta-schema vendored from the npm
package ``@asyncapi/specs`` (see ``schemas/vendor/README.md``), then checked against the
topic names in ``pipeline.settings`` and the JSON Schema files it points to.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, validators
from referencing import Registry

REPO = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = REPO / "schemas"
ASYNCAPI = SCHEMAS_DIR / "asyncapi.yaml"
META_SCHEMA = SCHEMAS_DIR / "vendor" / "asyncapi-3.0.0.json"

TOPICS = {
    "traverz.pings.v1",
    "traverz.reports.v1",
    "traverz.conditions.v1",
    "traverz.alerts.v1",
    "traverz.deadletter.v1",
}
WS_ADDRESS = "/v1/stream"
DRAFT7_FORMAT = "application/schema+json;version=draft-07"
# Resolution of the H3 cell used as record key, per topic.
KEY_RESOLUTION = {
    "traverz.pings.v1": 7,
    "traverz.reports.v1": 7,
    "traverz.conditions.v1": 9,
    "traverz.alerts.v1": 9,
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def meta_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(META_SCHEMA.read_text())
    return loaded


def _meta_validator(meta_schema: dict[str, Any]) -> Draft7Validator:
    # The meta-schema declares draft-07; use that validator, offline (no retrieval).
    cls = validators.validator_for(meta_schema)
    assert cls is Draft7Validator
    return Draft7Validator(meta_schema, registry=Registry())


def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        node = _pointer(doc, node["$ref"])
    return node


def _channels_by_address(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ch["address"]: ch for ch in doc["channels"].values()}


def _channel_messages(doc: dict[str, Any], channel: dict[str, Any]) -> list[dict[str, Any]]:
    return [_deref(doc, m) for m in channel["messages"].values()]


# -- the meta-schema ----------------------------------------------------------------------


def test_vendored_meta_schema_is_asyncapi_3_0_0(meta_schema: dict[str, Any]) -> None:
    Draft7Validator.check_schema(meta_schema)
    assert meta_schema["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "$id" not in meta_schema  # the "-without-$id" flavour: nothing to fetch


def test_vendored_meta_schema_matches_readme() -> None:
    """schemas/vendor/README.md records where the file came from; keep them in step."""
    readme = (META_SCHEMA.parent / "README.md").read_text()
    digest = hashlib.sha256(META_SCHEMA.read_bytes()).hexdigest()
    assert digest in readme, "update the checksum in schemas/vendor/README.md"
    assert "@asyncapi/specs" in readme


def test_document_validates_against_meta_schema(
    doc: dict[str, Any], meta_schema: dict[str, Any]
) -> None:
    validator = _meta_validator(meta_schema)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert not errors, errors


@pytest.mark.parametrize(
    ("path", "bad_value"),
    [
        (("operations", "ingestSendPings", "action"), "publish"),
        (("channels", "conditions", "bindings", "kafka", "partitions"), 0),
        (
            ("channels", "conditions", "bindings", "kafka", "topicConfiguration", "cleanup.policy"),
            ["forever"],
        ),
        (("asyncapi",), "2.6.0"),
    ],
)
def test_meta_schema_rejects_broken_documents(
    doc: dict[str, Any], meta_schema: dict[str, Any], path: tuple[str, ...], bad_value: Any
) -> None:
    """The vendored meta-schema really checks the parts we rely on."""
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    assert not _meta_validator(meta_schema).is_valid(broken)


# -- channels and topics ------------------------------------------------------------------


def test_channel_addresses_are_known(doc: dict[str, Any]) -> None:
    addresses = [ch.get("address") for ch in doc["channels"].values()]
    assert len(addresses) == len(set(addresses)), "duplicate channel address"
    assert set(addresses) == TOPICS | {WS_ADDRESS}


def test_settings_topics_are_documented(doc: dict[str, Any]) -> None:
    from pipeline import settings

    topics = {
        value
        for name, value in vars(settings).items()
        if name.startswith("TOPIC_") and isinstance(value, str)
    }
    assert topics, "pipeline.settings defines no TOPIC_* constants"
    assert topics == TOPICS
    assert set(settings.ALL_TOPICS) == TOPICS
    assert topics <= set(_channels_by_address(doc))


def test_kafka_channels_bindings(doc: dict[str, Any]) -> None:
    from pipeline.settings import Settings

    partitions = Settings.model_fields["partitions"].default
    replicas = Settings.model_fields["replication"].default
    servers = doc["servers"]
    for address, channel in _channels_by_address(doc).items():
        if address not in TOPICS:
            continue
        kafka = channel["bindings"]["kafka"]
        assert kafka["topic"] == address
        assert kafka["partitions"] == partitions, address
        assert kafka["replicas"] == replicas, address
        assert kafka["topicConfiguration"]["cleanup.policy"], address
        for server in channel["servers"]:
            assert _deref(doc, server)["protocol"] == "kafka"
        assert servers  # at least the local broker


def test_only_conditions_is_compacted(doc: dict[str, Any]) -> None:
    for address, channel in _channels_by_address(doc).items():
        if address not in TOPICS:
            continue
        policy = channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"]
        if address == "traverz.conditions.v1":
            assert policy == ["compact"]
        else:
            assert "compact" not in policy, address


def test_message_keys_are_h3_cells(doc: dict[str, Any]) -> None:
    from pipeline.settings import Settings

    expected_res = {
        7: Settings.model_fields["key_resolution"].default,
        9: Settings.model_fields["cell_resolution"].default,
    }
    assert expected_res == {7: 7, 9: 9}
    channels = _channels_by_address(doc)
    for address, res in KEY_RESOLUTION.items():
        for message in _channel_messages(doc, channels[address]):
            key = message["bindings"]["kafka"]["key"]
            assert key["type"] == "string"
            assert key["x-h3-resolution"] == res, address
            assert f"resolution {res}" in key["description"], address
    for message in _channel_messages(doc, channels["traverz.deadletter.v1"]):
        assert "key" in message["bindings"]["kafka"]


def test_message_key_patterns_accept_real_cells(doc: dict[str, Any]) -> None:
    import re

    h3 = pytest.importorskip("h3")
    channels = _channels_by_address(doc)
    for address, res in KEY_RESOLUTION.items():
        for message in _channel_messages(doc, channels[address]):
            pattern = re.compile(message["bindings"]["kafka"]["key"]["pattern"])
            for lat, lon in [(52.52, 13.405), (-33.87, 151.21), (37.77, -122.42), (0.0, 0.0)]:
                assert pattern.match(h3.latlng_to_cell(lat, lon, res)), address
                other = 9 if res == 7 else 7
                assert not pattern.match(h3.latlng_to_cell(lat, lon, other)), address


def test_websocket_channel(doc: dict[str, Any]) -> None:
    channel = _channels_by_address(doc)[WS_ADDRESS]
    assert "ws" in channel["bindings"]
    for server in channel["servers"]:
        assert _deref(doc, server)["protocol"] == "ws"
    payload_files = {
        Path(m["payload"]["schema"]["$ref"]).name for m in _channel_messages(doc, channel)
    }
    assert payload_files == {"ws_client_message.schema.json", "ws_server_message.schema.json"}


def test_servers(doc: dict[str, Any]) -> None:
    from pipeline.settings import Settings

    fields = Settings.model_fields
    servers = doc["servers"]
    kafka = [s for s in servers.values() if s["protocol"] == "kafka"]
    ws = [s for s in servers.values() if s["protocol"] == "ws"]
    assert servers["local"]["protocol"] == "kafka"
    assert [s["host"] for s in kafka] == [fields["bootstrap"].default]
    assert [s["host"] for s in ws] == [f"127.0.0.1:{fields['push_port'].default}"]


# -- payloads -----------------------------------------------------------------------------


def _payload_refs(doc: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
    for path, node in _walk(doc):
        if path and path[-1] == "payload" and isinstance(node, dict):
            assert node.get("schemaFormat") == DRAFT7_FORMAT, path
            ref = node["schema"]["$ref"]
            assert isinstance(ref, str)
            yield path, ref


def test_every_message_has_a_file_payload(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    assert messages
    for name, message in messages.items():
        assert "payload" in message, name
        assert message["payload"]["schema"]["$ref"].startswith("./"), name


def test_payload_refs_resolve_to_schema_files(doc: dict[str, Any]) -> None:
    refs = list(_payload_refs(doc))
    assert refs
    for path, ref in refs:
        file_part, _, fragment = ref.partition("#")
        target = (ASYNCAPI.parent / file_part).resolve()
        assert target.is_file(), f"{path}: {ref} does not exist"
        assert target.parent == SCHEMAS_DIR.resolve(), f"{path}: {ref} leaves schemas/"
        assert target.name.endswith(".schema.json"), f"{path}: {ref}"
        schema = json.loads(target.read_text())
        Draft7Validator.check_schema(schema)
        if fragment:
            _pointer(schema, f"#{fragment}")


def test_payloads_match_topics(doc: dict[str, Any]) -> None:
    expected = {
        "traverz.pings.v1": {"ping_record.schema.json"},
        "traverz.reports.v1": {"report_record.schema.json"},
        "traverz.conditions.v1": {"condition.schema.json"},
        "traverz.alerts.v1": {"alert.schema.json"},
        "traverz.deadletter.v1": {"deadletter.schema.json"},
    }
    channels = _channels_by_address(doc)
    for address, files in expected.items():
        got = {
            Path(m["payload"]["schema"]["$ref"]).name
            for m in _channel_messages(doc, channels[address])
        }
        assert got == files, address


def test_internal_refs_resolve(doc: dict[str, Any]) -> None:
    internal = [
        node["$ref"]
        for _, node in _walk(doc)
        if isinstance(node, dict)
        and isinstance(node.get("$ref"), str)
        and node["$ref"].startswith("#")
    ]
    assert internal
    for ref in internal:
        _pointer(doc, ref)


# -- operations ---------------------------------------------------------------------------


def _operations_by(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(service tag, action, channel address) for every operation."""
    result = set()
    for name, op in doc["operations"].items():
        tags = [t["name"] for t in op.get("tags", [])]
        assert len(tags) == 1, f"{name}: exactly one service tag"
        address = _deref(doc, op["channel"])["address"]
        channel_messages = [
            id(_deref(doc, m)) for m in _deref(doc, op["channel"])["messages"].values()
        ]
        for message in op.get("messages", []):
            assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
            assert id(_deref(doc, message)) in channel_messages, name
        result.add((tags[0], op["action"], address))
    return result


def test_operations(doc: dict[str, Any]) -> None:
    assert _operations_by(doc) == {
        ("ingest", "send", "traverz.pings.v1"),
        ("ingest", "send", "traverz.reports.v1"),
        ("worker", "receive", "traverz.pings.v1"),
        ("worker", "receive", "traverz.reports.v1"),
        ("worker", "send", "traverz.conditions.v1"),
        ("worker", "send", "traverz.alerts.v1"),
        ("worker", "send", "traverz.deadletter.v1"),
        ("push", "receive", "traverz.conditions.v1"),
        ("push", "receive", "traverz.alerts.v1"),
        ("push", "receive", WS_ADDRESS),
        ("push", "send", WS_ADDRESS),
    }
