"""pipeline.push.delivery: updated_at read from the prepared text, observed per message sent."""

from __future__ import annotations

import orjson

from pipeline.metrics import Registry
from pipeline.push.delivery import DeliveryLatency, updated_at
from pipeline.push.hub import prepared


def test_updated_at_is_read_from_condition_and_alert_texts() -> None:
    cond = prepared({"type": "condition", "condition": {"cell": "c", "version": 5, "updated_at": 1763780061.25}})
    alert = prepared({"type": "alert", "alert": {"id": "i", "updated_at": 1.5e9, "evidence": {}}})
    assert updated_at(cond["text"]) == 1763780061.25
    assert updated_at(alert["text"]) == 1.5e9
    assert updated_at(orjson.dumps({"type": "reroute", "route": []}).decode()) is None


def test_every_message_of_a_batch_is_observed_once() -> None:
    lat = DeliveryLatency(Registry())
    msg = prepared({"type": "condition", "condition": {"updated_at": 100.0}})
    lat.sent([msg, msg, prepared({"type": "subscribed", "cells": 3})], now=100.5)
    assert lat.hist.n == 2 and lat.hist.total == 1.0
    lat.sent([msg], now=99.0)  # a clock behind the worker's: never negative
    assert lat.hist.n == 3 and lat.hist.total == 1.0
