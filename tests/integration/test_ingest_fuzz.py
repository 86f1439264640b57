"""Fuzzing the real ingest process: no 5xx ever, it stays up, and every 2xx ping is in Kafka.

(a) Hypothesis throws thousands of requests at it: JSON of any shape, near-miss pings, random
bytes, random content types, encodings and Authorization headers. (b) Schemathesis derives
requests from the proxy's own ``/openapi.json``.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline import tokens
from pipeline.ingest.body import inflate, parse_json
from pipeline.ingest.openapi import OPENAPI
from pipeline.settings import TOPIC_PINGS, TOPIC_REPORTS, Settings
from tests.conftest import token_for
from tests.integration.test_ingest import LAT, LON, end_offsets, proxy_stack, records_since, run
from tests.support.procs import Proc

pytestmark = pytest.mark.integration

UNLIMITED = {"TRAVERZ_INGEST_RATE": "1000000", "TRAVERZ_INGEST_BURST": "1000000"}


@pytest.fixture(scope="module")
def cfg(kafka_bootstrap: str) -> Settings:
    return Settings(bootstrap=kafka_bootstrap)


@pytest.fixture(scope="module")
def proxy(cfg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One proxy for both fuzzers, without a rate limit (429 is tested elsewhere)."""
    s = proxy_stack(cfg.bootstrap, tmp_path_factory.mktemp("ingest-fuzz"), cfg)
    p = s.ingest(**UNLIMITED)
    yield p
    s.stop_all()


# -- (a) hypothesis: requests of every shape --------------------------------------------------------
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
FIELDS = ("seq", "ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m", "state", "device_id")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([1e308, -1e308, 2**53, 2**64, -(2**63) - 1, 10**400]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)
NUMBERS = st.floats() | st.integers(-(10**6), 10**6) | st.sampled_from([-0.0, 90.0, 90.0001, 180.0, 360.0, 1e400])


@dataclass
class Run:
    """What one fuzz run sent and what the proxy said it accepted."""

    devices: list[str]
    tokens: dict[str, str]
    accepted: set[tuple[str, int]] = field(default_factory=set)
    report_ids: set[str] = field(default_factory=set)
    known_report: str = "r-unknown"
    statuses: dict[int, int] = field(default_factory=dict)


@st.composite
def near_miss_ping(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ping, then a few mutations: fields dropped, retyped, pushed out of range, added."""
    p: dict[str, Any] = {
        "seq": draw(st.integers(0, 2**31)),
        "ts": time.time() - draw(st.floats(0, 3000)),
        "lat": LAT + draw(st.floats(-0.5, 0.5)),
        "lon": LON + draw(st.floats(-0.5, 0.5)),
        "speed_mps": draw(st.floats(0, 90)),
        "heading_deg": draw(st.floats(0, 360)),
        "accuracy_m": draw(st.floats(0, 100)),
    }
    if draw(st.booleans()):
        p["state"] = draw(st.sampled_from(["driving", "stopped", "parked"]))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS) | st.text(max_size=8))
        how = draw(st.sampled_from(["drop", "value", "number", "nonfinite"]))
        if how == "drop":
            p.pop(name, None)
        elif how == "value":
            p[name] = draw(JSON_VALUES)
        elif how == "number":
            p[name] = draw(NUMBERS)
        else:
            p[name] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return p


@st.composite
def request(draw: st.DrawFn, run_: Run) -> tuple[str, dict[str, str], bytes]:
    dev = draw(st.sampled_from(run_.devices))
    kind = draw(st.sampled_from(["pings"] * 8 + ["report", "vote", "other", "big"]))
    path = "/v1/pings"
    doc: Any
    if kind == "pings":
        batch = draw(st.lists(near_miss_ping(), min_size=0, max_size=12))
        if draw(st.integers(0, 9)) == 0 and batch:
            batch[0]["device_id"] = draw(st.sampled_from([dev, "someone-else"]))
        doc = batch if len(batch) != 1 or draw(st.booleans()) else batch[0]
    elif kind == "report":
        path = "/v1/reports"
        doc = {
            "type": draw(st.sampled_from(["crash", "hazard", "closure", "road_work", "stalled_vehicle", "ufo"])),
            "lat": LAT + draw(st.floats(-0.5, 0.5)),
            "lon": LON + draw(st.floats(-0.5, 0.5)),
            "heading_deg": draw(st.floats(0, 360)),
            "ts": time.time() - draw(st.floats(0, 600)),
        }
        if draw(st.booleans()):
            doc["text"] = draw(st.text(max_size=300))
        for _ in range(draw(st.integers(0, 2))):
            doc[draw(st.sampled_from(["type", "lat", "lon", "heading_deg", "ts", "text"]))] = draw(JSON_VALUES)
    elif kind == "vote":
        rid = draw(st.just(run_.known_report) | st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True))
        path = f"/v1/reports/{rid}/votes"
        doc = {"vote": draw(st.sampled_from(["still_there", "not_there"]) | JSON_VALUES)}
    elif kind == "big":  # past a limit: 500 pings, 256 KiB on the wire, 2 MiB inflated
        one_ping = draw(near_miss_ping())
        size = draw(st.sampled_from(["batch", "wire", "inflated"]))
        if size == "batch":
            doc = [one_ping] * draw(st.integers(495, 505))
        elif size == "wire":
            doc = [one_ping | {"pad": "x" * draw(st.integers(255 * 1024, 257 * 1024))}]
        else:
            doc = [one_ping | {"pad": " " * draw(st.integers(2047 * 1024, 2049 * 1024))}]
    else:
        doc = draw(JSON_VALUES)

    shape = draw(st.sampled_from(["json"] * 8 + ["bytes", "nonfinite-text"]))
    if shape == "json":
        body = json.dumps(doc).encode()  # NaN and ±Infinity come out raw, as lenient encoders send them
    elif shape == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        body = json.dumps(doc).replace("0", draw(st.sampled_from(["NaN", "1e400", "Infinity"])), 1).encode()

    headers: dict[str, str] = {}
    # draws favour small integers: 0 is the common case (a good token, JSON, no encoding)
    who = draw(st.integers(0, 19))  # mostly a good token: the body is what is being fuzzed
    if who == 0 or who >= 6:
        headers["authorization"] = f"Bearer {run_.tokens[dev]}"
    elif who == 1:
        headers["authorization"] = draw(PRINTABLE)
    elif who == 2:
        headers["authorization"] = ("Bearer " + draw(PRINTABLE)).strip()
    elif who == 3:
        headers["authorization"] = "Bearer " + tokens.issue(
            dev, secret=Settings().token_secret, kid="k1", issuer="traverz", audience="elsewhere"
        )
    elif who == 4:
        headers["authorization"] = "Bearer " + tokens.issue(
            dev, secret=Settings().token_secret, kid="k1", issuer="traverz", audience="traverz-devices", ttl_s=-5
        )
    ctype = draw(st.integers(0, 19))
    if ctype == 1:
        headers["content-type"] = draw(PRINTABLE)
    elif ctype == 2:
        headers["content-type"] = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded"]))
    elif ctype == 3:
        headers["content-type"] = "Application/JSON; charset=utf-8"
    elif ctype != 4:  # 4: no content type at all
        headers["content-type"] = "application/json"
    enc = draw(st.integers(0, 19))
    if enc == 1:
        headers["content-encoding"] = draw(PRINTABLE)
    elif enc == 2:
        headers["content-encoding"] = draw(st.sampled_from(["br", "deflate", "identity"]))
    elif enc == 3:
        headers["content-encoding"] = "gzip"  # but the body is not
    elif 4 <= enc <= 8 or len(body) > 200_000:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    if draw(st.booleans()):
        headers["accept-encoding"] = draw(st.sampled_from(["gzip", "identity", "gzip;q=0", "*"]))
    return path, headers, body


def _track(run_: Run, path: str, headers: dict[str, str], body: bytes, r: httpx.Response) -> None:
    """Note what a 2xx says was accepted, checking its counts against what was sent."""
    doc = r.json()
    if path == "/v1/pings":
        sent = parse_json(inflate(body, headers.get("content-encoding")))
        items = sent if isinstance(sent, list) else [sent]
        bad = {b["index"] for b in doc["rejected"]}
        assert doc["accepted"] == len(items) - len(bad) > 0
        dev = tokens_device(run_, headers)
        run_.accepted.update((dev, items[i]["seq"]) for i in range(len(items)) if i not in bad)
    elif path == "/v1/reports":
        run_.report_ids.add(doc["id"])


def tokens_device(run_: Run, headers: dict[str, str]) -> str:
    token = headers["authorization"].removeprefix("Bearer ")
    return next(d for d, t in run_.tokens.items() if t == token)


def test_hypothesis_requests_never_5xx_and_every_accepted_ping_is_in_kafka(proxy: Proc, cfg: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    devices = [f"fz-{tag}-{i}" for i in range(8)]
    run_ = Run(devices, {d: token_for(cfg, d) for d in devices})
    pings_mark = run(end_offsets(cfg.bootstrap, TOPIC_PINGS))
    reports_mark = run(end_offsets(cfg.bootstrap, TOPIC_REPORTS))

    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", timeout=10) as client:
        report = {"type": "hazard", "lat": LAT, "lon": LON, "heading_deg": 1.0, "ts": time.time()}
        r = client.post("/v1/reports", json=report, headers={"authorization": f"Bearer {run_.tokens[devices[0]]}"})
        assert r.status_code == 202
        run_.known_report = r.json()["id"]
        run_.report_ids.add(run_.known_report)

        @hsettings(
            max_examples=1500,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            path, headers, body = data.draw(request(run_))
            r = client.post(path, content=body, headers=headers)
            run_.statuses[r.status_code] = run_.statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (r.status_code, r.text, headers, body[:200])
            assert r.status_code in (202, 400, 401, 403, 404, 413, 415), r.status_code
            doc = r.json()
            if r.status_code >= 400:
                assert isinstance(doc["error"], str) and doc["error"], doc
            else:
                _track(run_, path, headers, body, r)

        one()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert proxy.popen.poll() is None
    # the fuzzer reached the interesting answers, not only 4xx at the door
    assert run_.statuses.get(202, 0) > 50 and run_.statuses.get(400, 0) > 50, run_.statuses
    assert run_.statuses.get(401, 0) > 10 and run_.statuses.get(415, 0) > 10, run_.statuses
    assert run_.statuses.get(413, 0) > 5 and run_.statuses.get(403, 0) > 5, run_.statuses

    stored = set()
    for rec in run(records_since(cfg.bootstrap, pings_mark, timeout=60)):
        for p in json.loads(rec.value)["pings"]:
            if p["device_id"] in run_.tokens:
                stored.add((p["device_id"], p["seq"]))
    assert run_.accepted, "no ping was accepted"
    assert run_.accepted == stored, (sorted(run_.accepted - stored)[:10], sorted(stored - run_.accepted)[:10])
    ids = {json.loads(rec.value).get("id") for rec in run(records_since(cfg.bootstrap, reports_mark))}
    assert run_.report_ids <= ids


# -- (b) schemathesis: requests derived from the OpenAPI document ------------------------------------
# Loaded from the module the proxy serves (checked equal to /openapi.json below): schemathesis's
# lazy ``from_fixture`` loader relies on a pytest internal (``Item._nodeid``) that pytest 9 dropped.
schema = schemathesis.openapi.from_dict(copy.deepcopy(OPENAPI))


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_the_fuzzed_document_is_the_served_one(proxy: Proc) -> None:
    r = httpx.get(f"http://127.0.0.1:{proxy.port}/openapi.json")
    assert r.status_code == 200 and r.json() == OPENAPI


@schema.parametrize()
@hsettings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_openapi_operations_never_5xx_and_answer_as_documented(
    case: Any, proxy: Proc, cfg: Settings, http_session: requests.Session
) -> None:
    headers = {"Authorization": f"Bearer {token_for(cfg, 'fz-schemathesis')}"}
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{proxy.port}",
        session=http_session,
        headers=headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
