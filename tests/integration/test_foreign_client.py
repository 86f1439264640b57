"""The output topics as a stranger sees them: confluent-kafka (librdkafka), guided only by ``schemas/asyncapi.yaml``.

Nothing of ``pipeline`` is used to read or check the records: topic names, keys and payload
schemas come from the AsyncAPI document at test time, the records are decoded with the standard
library, and validated with jsonschema. The traffic is real — pings and a crash report posted
to a real ingest proxy, turned into a condition and an alert by a real worker. (``pipeline`` is
used only to *write* the test traffic: to pick a spot and to issue device tokens.)
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import httpx
import jsonschema
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from pipeline import geo
from pipeline.settings import Settings
from tests.conftest import token_for
from tests.support.procs import Stack, process_env

pytestmark = pytest.mark.integration

ASYNCAPI = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml"
# the whole topics are read and checked, other modules' records too, behind a worker that may still be
# starting on a busy CI machine: 60 s was once not enough under load (the loop ends as soon as both are seen)
WAIT_S = 120.0


@dataclass(frozen=True)
class Channel:
    """What the AsyncAPI document says about one Kafka channel."""

    address: str
    payload: jsonschema.Draft7Validator
    key: jsonschema.Draft7Validator
    key_resolution: int | None
    cleanup_policy: list[str]


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), f"only local refs expected inside the document: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return dict(node)


def channels_from_asyncapi() -> dict[str, Channel]:
    """Every channel the worker sends, keyed by its address."""
    doc = yaml.safe_load(ASYNCAPI.read_text())
    out: dict[str, Channel] = {}
    for op in doc["operations"].values():
        if op["action"] != "send" or "worker" not in {t["name"] for t in op.get("tags", [])}:
            continue
        channel = _resolve(doc, op["channel"]["$ref"])
        (msg_ref,) = op["messages"]
        message = _resolve(doc, msg_ref["$ref"])
        if "$ref" in message:  # channel messages point at components
            message = _resolve(doc, message["$ref"])
        payload = message["payload"]
        assert "draft-07" in payload["schemaFormat"]
        schema = json.loads((ASYNCAPI.parent / payload["schema"]["$ref"]).read_text())
        key = message["bindings"]["kafka"]["key"]
        out[channel["address"]] = Channel(
            address=channel["address"],
            payload=jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()),
            key=jsonschema.Draft7Validator(key),
            key_resolution=key.get("x-h3-resolution"),
            cleanup_policy=list(channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"]),
        )
    return out


CHANNELS = channels_from_asyncapi()
CONDITIONS, ALERTS = "traverz.conditions.v1", "traverz.alerts.v1"


@dataclass
class Running:
    settings: Settings
    stack: Stack
    ingest_url: str
    run: str


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("foreign")
    settings = Settings(
        bootstrap=kafka_bootstrap, data_dir=workdir / "state", app_id=f"traverz-fc{uuid.uuid4().hex[:8]}"
    )
    env = process_env(settings, TRAVERZ_MIN_DEVICES="3")
    stack = Stack(env=env, workdir=Path(workdir))
    try:
        ingest = stack.ingest()
        stack.worker()
        yield Running(settings, stack, f"http://127.0.0.1:{ingest.port}", uuid.uuid4().hex[:6])
    finally:
        stack.stop_all()


@pytest.fixture
def env(running: Running, request: pytest.FixtureRequest) -> Iterator[Running]:
    yield running
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(running.stack.logs())


def test_asyncapi_names_the_output_topics() -> None:
    assert {CONDITIONS, ALERTS} <= set(CHANNELS)
    for address in (CONDITIONS, ALERTS):
        assert CHANNELS[address].key_resolution == 9


def _cleanup_policy(admin: AdminClient, topic: str) -> list[str]:
    deadline = time.monotonic() + 15.0
    while True:
        (fut,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        try:
            return sorted(fut.result(timeout=15)["cleanup.policy"].value.split(","))
        except KafkaException as exc:
            # a topic created a moment ago may not have reached every broker's metadata yet
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_topic_configuration_on_the_broker_matches_the_document(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        for address in (CONDITIONS, ALERTS):
            assert _cleanup_policy(admin, address) == sorted(CHANNELS[address].cleanup_policy), address
    finally:
        del admin  # librdkafka would otherwise log its reconnects when the session broker stops


def _post(env: Running, path: str, body: Any, device: str) -> None:
    headers = {"authorization": f"Bearer {token_for(env.settings, device)}"}
    r = httpx.post(f"{env.ingest_url}{path}", json=body, headers=headers, timeout=10.0)
    assert r.status_code == 202, r.text


def _consumer(bootstrap: str, topics: list[str]) -> Consumer:
    """Every partition from the beginning, no group coordination (and nothing committed)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"foreign-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    meta = c.list_topics(timeout=15)
    tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in sorted(meta.topics[t].partitions)]
    assert tps, "no partitions"
    c.assign(tps)
    return c


def check_record(topic: str, key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """Validate one record against the document; the decoded payload (None for a tombstone)."""
    ch = CHANNELS[topic]
    assert key is not None, f"{topic}: a record without a key"
    key_text = key.decode("utf-8")
    ch.key.validate(key_text)
    assert h3.is_valid_cell(key_text) and h3.get_resolution(key_text) == ch.key_resolution
    if value is None:
        # only the compacted topic knows tombstones ("a null value (tombstone) removes it")
        assert "compact" in ch.cleanup_policy, f"{topic}: a null value"
        return None
    payload = json.loads(value.decode("utf-8"))
    ch.payload.validate(payload)
    assert payload["cell"] == key_text, "the payload's cell equals the record key"
    return dict(payload)


def test_conditions_and_alerts_read_with_confluent_kafka_match_the_asyncapi_document(env: Running) -> None:
    rng = random.Random()
    # a spot of its own (Munich, random per run): no other module's traffic falls into it
    spot = geo.cell_center(geo.cell(rng.uniform(48.10, 48.17), rng.uniform(11.50, 11.62), 9))
    cell = geo.cell(*spot, 9)
    now = time.time()
    for d in range(3):
        pings = [
            {
                "seq": i + 1,
                "ts": now - 12.0 + 5.0 * i,
                "lat": spot[0],
                "lon": spot[1] + 0.0001 * i,
                "speed_mps": 9.0 + d,
                "heading_deg": 90.0,
                "accuracy_m": 5.0,
            }
            for i in range(3)
        ]
        _post(env, "/v1/pings", pings, f"fc-{env.run}-car{d}")
    crash_at = geo.destination(*spot, 0.0, 40.0)
    for reporter in ("reporter", "witness"):  # a crash takes two drivers' word
        _post(
            env,
            "/v1/reports",
            {"type": "crash", "lat": crash_at[0], "lon": crash_at[1], "heading_deg": 90.0, "ts": time.time()},
            f"fc-{env.run}-{reporter}",
        )

    consumer = _consumer(env.settings.bootstrap, [CONDITIONS, ALERTS])
    checked = {CONDITIONS: 0, ALERTS: 0}
    condition: dict[str, Any] | None = None
    alert: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + WAIT_S
        while (condition is None or alert is None) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                continue
            topic = msg.topic()
            assert topic is not None
            payload = check_record(topic, msg.key(), msg.value())  # every record on the topics, not only ours
            checked[topic] += 1
            if payload is None:
                continue
            if topic == CONDITIONS and payload["cell"] == cell:
                condition = payload
            elif (
                topic == ALERTS
                and payload["type"] == "crash"
                and geo.distance_m(payload["lat"], payload["lon"], *crash_at) < 1.0
            ):
                alert = payload
    finally:
        consumer.close()

    assert condition is not None, f"no condition of {cell} within {WAIT_S}s ({checked} records checked)"
    assert alert is not None, f"no crash alert near {crash_at} within {WAIT_S}s ({checked} records checked)"
    (sector,) = condition["sectors"]
    assert sector["devices"] == 3 and sector["heading_deg"] == 90.0
    assert alert["state"] == "opened" and alert["evidence"]["reports"] == 2
    assert alert["cell"] == h3.latlng_to_cell(crash_at[0], crash_at[1], 9)
    text = json.dumps([condition, alert])
    assert "device_id" not in text and f"fc-{env.run}" not in text
