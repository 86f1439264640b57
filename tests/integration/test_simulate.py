"""`traverz simulate` against the real stack: SUMO vehicles as phones → ingest → Kafka → worker → alerts.

The CI scenario (``scenarios/ci.toml``, A10 near Königs Wusterhausen) injects one rear-end crash and
one stalled car into motorway traffic. 300 s of sim time run in ~60 s of wall time (stamps start
240 s in the past and catch up at 6×), real HTTP with a device token per vehicle, real WebSocket
subscriptions, a real worker. The scenario must come out with both incidents detected by the probe
detectors and no alert that SUMO's ground truth does not explain.
"""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from pipeline.sim import report
from pipeline.sim.run import Endpoints, simulate
from pipeline.sim.scenario import load, repo_scenarios
from tests.support.procs import Stack

pytestmark = pytest.mark.integration


async def test_ci_scenario_detects_the_crash_and_the_stall_without_false_alarms(
    stack: Stack, settings: Settings
) -> None:
    # many phones from one host at 6x their real rate: the per-device limit is raised for this stack
    ingest = stack.ingest(TRAVERZ_INGEST_RATE="50", TRAVERZ_INGEST_BURST="500")
    stack.worker()
    push = stack.push()
    sc = load(next(p for p in repo_scenarios() if p.stem == "ci"))
    ends = Endpoints(f"http://127.0.0.1:{ingest.port}", f"ws://127.0.0.1:{push.port}/v1/stream", settings.bootstrap)

    run = await simulate(sc, ends, settings)
    res = report.result(run)

    truth = {t["type"]: t for t in res["truth"]}
    assert truth["crash"]["injected"] and truth["stalled_vehicle"]["injected"], res["truth"]
    det = res["score"]["detection"]
    assert det["crash"]["detected"] == 1, (res["alerts"], res["truth"])
    assert det["stalled_vehicle"]["detected"] == 1, (res["alerts"], res["truth"])
    assert det["crash"]["ttd_median_s"] <= 60.0, det  # seconds of sim time, worker latency ×6 included
    assert det["stalled_vehicle"]["ttd_median_s"] <= 150.0, det
    assert res["score"]["false_alarms"]["count"] == 0, res["score"]["false_alarms"]
    # every phone posted over HTTP with its own token, and nothing was refused
    phones = res["phones"]
    assert phones["pings_accepted"] > 3000 and phones["pings_rejected"] == 0 and phones["failed_requests"] == 0, phones
    assert res["subscribers"] > 0
