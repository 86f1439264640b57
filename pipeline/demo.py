"""``traverz demo``: the whole stack on this machine, driven by a SUMO city, with live output.

Starts (or reuses) the embedded broker, creates the topics, starts ingest, one stream worker
and one push worker as child processes, and runs the demo scenario (``scenarios/city.toml``:
Berlin Adlershof with a stalled car, a crash, road work, a false report, GPS noise and a
coverage gap) through them: every SUMO vehicle is a phone posting to ingest, a share hold a
``/v1/stream`` subscription. It prints, as they happen, the injected incidents (SUMO's
truth), the alerts the worker opens and clears, cells whose congestion level crosses into or
out of a jam, and reroutes accepted; then the score table. Ctrl-C (or SIGTERM, SIGHUP) stops
everything this command started (the broker only if it started it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from pipeline import kafka_io, kafka_local
from pipeline.settings import Settings
from pipeline.sim import report, stack
from pipeline.sim.run import Endpoints, default_say, simulate, stderr_progress
from pipeline.sim.scenario import load, repo_scenarios

DEMO_SCENARIO = "city"


def stop_like_ctrl_c() -> None:
    """SIGTERM and SIGHUP stop the demo as Ctrl-C does: its ``finally`` stops the children and the broker.

    Python's default for SIGTERM ends the process on the spot, which left ingest, the worker,
    push and the broker running (a `timeout make demo`, a service manager, a closed terminal).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def run(s: Settings, duration: float = 0.0, devices: int = 0) -> int:
    """``duration`` > 0 shortens the scenario (sim seconds); ``devices`` is unused (SUMO's demand decides)."""
    del devices
    stop_like_ctrl_c()
    for noisy in ("httpx", "httpcore", "websockets", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sc = load(next(p for p in repo_scenarios() if p.stem == DEMO_SCENARIO))
    if duration > 0:
        sc = replace(sc, duration_s=min(sc.duration_s, duration))
    lay = kafka_local.layout(s.home, s.kafka_port, s.kafka_controller_port)
    started_broker = kafka_local.read_pid(lay) is None
    print(f"[demo] starting Kafka {kafka_local.KAFKA_VERSION} on {lay.bootstrap} (first run downloads the jars)")
    kafka_local.start(lay, heap=s.kafka_heap)
    s = s.model_copy(update={"bootstrap": lay.bootstrap})
    created = asyncio.run(kafka_io.create_topics(s.bootstrap, s.partitions, s.replication))
    print(f"[demo] topics ready ({len(created)} created)")
    st = None
    try:
        st = stack.start(s, Path(".traverz/demo-logs"), own_broker=False, routing_net=sc.network)
        ss = st.settings
        print(
            f"[demo] ingest {st.ingest_url}  push {st.push_url}  logs .traverz/demo-logs/ — Ctrl-C stops everything\n"
            f"[demo] {sc.name}: {sc.description} — {sc.duration_s:.0f} s of SUMO time at up to ×{sc.speedup:.0f}",
            flush=True,
        )
        ends = Endpoints(st.ingest_url, st.push_url, ss.bootstrap)
        result = asyncio.run(
            simulate(
                sc,
                ends,
                ss,
                say=default_say(),
                progress=stderr_progress(sc.duration_s) if sys.stderr.isatty() else None,
            )
        )
        print(file=sys.stderr)
        print(report.table([report.result(result)]))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("[demo] stopping ...", flush=True)
        if st is not None:
            st.stop()
        if started_broker:
            kafka_local.stop(lay)
        print("[demo] stopped")
