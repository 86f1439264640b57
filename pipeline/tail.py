"""``traverz tail conditions|alerts``: follow the output topics in a terminal or a pipe."""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings


def render(kind: str, doc: dict[str, Any]) -> str:
    """One readable line per message."""
    at = time.strftime("%H:%M:%S", time.localtime(float(doc.get("updated_at", time.time()))))
    if kind == "conditions":
        secs = " ".join(
            f"{int(s['heading_deg'])}°={s['median_mps'] * 3.6:.0f}km/h/L{s['level']}" for s in doc["sectors"]
        )
        return f"{at} {doc['cell']} level {doc['level']} jam {doc['jam_factor']} {secs}"
    return (
        f"{at} {doc['state']:<8} {doc['type']:<16} {doc['id']} at {doc['lat']:.5f},{doc['lon']:.5f} "
        f"conf {doc['confidence']:.2f}"
    )


async def follow(s: Settings, what: str, json_lines: bool = False, from_beginning: bool = False) -> int:
    topic = TOPIC_CONDITIONS if what == "conditions" else TOPIC_ALERTS
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=s.bootstrap,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    try:
        async for msg in consumer:
            if msg.value is None:
                continue
            try:
                doc = orjson.loads(msg.value)
                line = orjson.dumps(doc).decode() if json_lines else render(what, doc)
            except (ValueError, KeyError, TypeError):
                continue
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    finally:
        await consumer.stop()
    return 0
