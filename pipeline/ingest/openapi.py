"""The OpenAPI 3.1 description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_num = {"type": "number"}
_error = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
PING = {
    "type": "object",
    "required": ["seq", "ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m"],
    "properties": {
        "seq": {"type": "integer", "minimum": 0},
        "ts": {**_num, "description": "epoch seconds; at most 5 min ahead, 24 h back"},
        "lat": {**_num, "minimum": -90, "maximum": 90},
        "lon": {**_num, "minimum": -180, "maximum": 180},
        "speed_mps": {**_num, "minimum": 0, "maximum": 90},
        "heading_deg": {**_num, "minimum": 0, "maximum": 360},
        "accuracy_m": {**_num, "minimum": 0},
        "state": {"type": "string", "enum": ["driving", "stopped", "parked"]},
        "device_id": {"type": "string", "description": "optional; must be the token's device"},
    },
}
_errors: dict[str, Any] = {
    code: {"description": text, "content": {"application/json": {"schema": _error}}}
    for code, text in {
        "400": "malformed JSON, wrong types, invalid values",
        "401": "missing, expired or forged token",
        "403": "the body names another device",
        "413": "body over 256 KiB, over 2 MiB inflated, or over 500 pings",
        "415": "not application/json, or an encoding other than gzip",
        "429": "this device sends too often (see Retry-After)",
        "503": "Kafka unavailable; nothing was accepted (see Retry-After)",
    }.items()
}


def _json(properties: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": {"type": "object", "properties": properties}}}


def _post(summary: str, schema: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"device": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {
                "202": {"description": "accepted and stored in Kafka", "content": {"application/json": {"schema": ok}}},
                **_errors,
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Traverz ingest", "version": "1"},
    "components": {"securitySchemes": {"device": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    "paths": {
        "/v1/pings": _post(
            "One ping or a batch of up to 500 (gzip accepted)",
            {"oneOf": [PING, {"type": "array", "items": PING, "minItems": 1, "maxItems": 500}]},
            {
                "type": "object",
                "properties": {
                    "accepted": {"type": "integer"},
                    "rejected": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"index": {"type": "integer"}, "reason": {"type": "string"}},
                        },
                    },
                },
            },
        ),
        "/v1/reports": _post(
            "A driver's report",
            {
                "type": "object",
                "required": ["type", "lat", "lon", "heading_deg", "ts"],
                "properties": {
                    "type": {"type": "string", "enum": ["crash", "road_work", "stalled_vehicle", "hazard", "closure"]},
                    "lat": {**_num, "minimum": -90, "maximum": 90},
                    "lon": {**_num, "minimum": -180, "maximum": 180},
                    "heading_deg": {**_num, "minimum": 0, "maximum": 360},
                    "ts": _num,
                    "text": {"type": "string", "maxLength": 280},
                },
            },
            {"type": "object", "properties": {"id": {"type": "string"}}},
        ),
        "/v1/reports/{report_id}/votes": {
            **_post(
                "Vote on a report",
                {
                    "type": "object",
                    "required": ["vote"],
                    "properties": {"vote": {"type": "string", "enum": ["still_there", "not_there"]}},
                },
                {"type": "object"},
            ),
        },
        "/healthz": {
            "get": {
                "summary": "process alive",
                "responses": {"200": {"description": "ok", "content": _json({"status": {"type": "string"}})}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Kafka reachable",
                "responses": {
                    "200": {"description": "ready", "content": _json({"ready": {"type": "boolean"}})},
                    "503": {"description": "not ready", "content": _json({"ready": {"type": "boolean"}})},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": _json({"openapi": {"type": "string"}})}},
            }
        },
    },
}
OPENAPI["paths"]["/v1/reports/{report_id}/votes"]["post"]["parameters"] = [
    {"name": "report_id", "in": "path", "required": True, "schema": {"type": "string"}}
]
OPENAPI["paths"]["/v1/reports/{report_id}/votes"]["post"]["responses"]["404"] = {
    "description": "not a report id",
    "content": {"application/json": {"schema": _error}},
}
