"""``traverz``: one command for every process and operator task.

Every option defaults from a ``TRAVERZ_*`` environment variable (shown in
``--help``), so a process is configured the same way from a shell, from
``make demo`` and from docker compose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from pipeline import kafka_local, logs
from pipeline.settings import Settings, get_settings


def _env(name: str) -> str:
    return f"TRAVERZ_{name.upper()}"


def _broker_layout(s: Settings) -> kafka_local.BrokerLayout:
    return kafka_local.layout(s.home, s.kafka_port, s.kafka_controller_port)


def cmd_kafka(args: argparse.Namespace, s: Settings) -> int:
    lay = _broker_layout(s)
    if args.action == "up":
        print(f"resolving Apache Kafka {kafka_local.KAFKA_VERSION} jars (cached in {lay.libs}) ...", flush=True)
        pid = kafka_local.start(lay, heap=s.kafka_heap)
        print(f"kafka {kafka_local.KAFKA_VERSION} (KRaft) listening on {lay.bootstrap}, pid {pid}")
        print(f"  data: {lay.data}\n  log:  {lay.log}")
        return 0
    if args.action == "down":
        stopped = kafka_local.stop(lay)
        print("kafka stopped" if stopped else "kafka was not running")
        if args.wipe:
            kafka_local.wipe(lay)
            print(f"removed {lay.base}")
        return 0
    running = kafka_local.read_pid(lay)
    if running is None:
        print(f"kafka is not running (port {lay.port})")
        return 3
    print(f"kafka is running on {lay.bootstrap}, pid {running}, data {lay.data}")
    return 0


def cmd_topics(args: argparse.Namespace, s: Settings) -> int:
    from pipeline import kafka_io
    from pipeline.ops import rescale, topics

    if args.action == "create":
        specs = rescale.data_specs(s, rescale.Generation.of(s, s.generation))
        created = asyncio.run(
            kafka_io.create_topics(s.bootstrap, args.partitions or s.partitions, s.replication, specs)
        )
        for spec in specs:
            print(f"{spec.name}: {'created' if spec.name in created else 'exists'}")
        return 0
    if args.action == "rescale":
        if args.partitions < 1:
            print("traverz topics rescale: --partitions N is required", file=sys.stderr)
            return 2
        try:
            asyncio.run(rescale.rescale(s, args.partitions, say=lambda m: print(m, flush=True), timeout_s=args.timeout))
        except rescale.RescaleError as exc:
            print(f"traverz topics rescale: {exc}", file=sys.stderr)
            return 1
        return 0
    d = asyncio.run(topics.describe(s, sample_s=args.sample, group=args.group))
    print(json.dumps(d.to_json(), ensure_ascii=False) if args.json else topics.render(d))
    return 0


def cmd_tokens(args: argparse.Namespace, s: Settings) -> int:
    from pipeline import tokens

    print(
        tokens.issue(
            args.device,
            secret=s.token_secret,
            kid=s.token_kid,
            issuer=s.token_issuer,
            audience=s.token_audience,
            ttl_s=args.ttl,
        )
    )
    return 0


def cmd_ingest(args: argparse.Namespace, s: Settings) -> int:
    import uvicorn

    from pipeline.ingest.app import build_app

    cert = args.tls_cert or s.tls_cert
    key = args.tls_key or s.tls_key
    uvicorn.run(
        build_app(s),
        host=args.host or s.ingest_host,
        port=args.port or s.ingest_port,
        log_level="warning",
        log_config=args.log_config,  # pipeline/logs.py: --log-format for uvicorn's loggers too
        access_log=False,
        ssl_certfile=cert or None,
        ssl_keyfile=key or None,
        http="httptools",
        loop="uvloop",
    )
    return 0


def cmd_push(args: argparse.Namespace, s: Settings) -> int:
    import uvicorn

    from pipeline.push.app import MAX_FRAME, build_app

    uvicorn.run(
        build_app(s),
        host=args.host or s.push_host,
        port=args.port or s.push_port,
        log_level="warning",
        log_config=args.log_config,  # pipeline/logs.py: --log-format for uvicorn's loggers too
        access_log=False,
        ws_max_size=MAX_FRAME,  # a bigger client frame is closed with 1009
        ws="websockets-sansio",  # writes each prepared frame straight to the transport (bench push)
        # Our frames go out uncompressed (pipeline/push/frames.py); negotiated, deflate would still
        # hold a zlib inflater per browser connection for the few bytes drivers send.
        ws_per_message_deflate=False,
        loop="uvloop",
    )
    return 0


def cmd_worker(args: argparse.Namespace, s: Settings) -> int:
    from pipeline import kafka_io
    from topologies.app import app

    # Create the tables' changelog topics before faust starts. Left to faust, a topic it
    # creates at start-up can be missing from its consumer's first metadata, recorded with
    # 0 partitions, and the first write to that table crashes the worker (PartitionsMismatch).
    changelogs = tuple(
        kafka_io.TopicSpec(t.changelog_topic.get_topic_name(), {"cleanup.policy": "compact"})
        for t in app.tables.values()
    )
    asyncio.run(kafka_io.create_topics(s.bootstrap, s.partitions, s.replication, changelogs))
    sys.argv = [
        "traverz-worker",
        "worker",
        "-l",
        args.loglevel,
        "--web-port",
        str(s.worker_port),
        "--web-bind",
        s.worker_host,
        "--web-host",
        s.worker_host,
    ]
    app.conf.logging_config = logs.dict_config(args.log_config_format, args.loglevel)  # mode applies it at start
    app.main()
    return 0


def cmd_demo(args: argparse.Namespace, s: Settings) -> int:
    from pipeline import demo

    return demo.run(s, duration=args.duration, devices=args.devices)


def _seeds(spec: str) -> list[int]:
    from pipeline.sim.scenario import seeds

    try:
        return seeds(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_simulate(args: argparse.Namespace, s: Settings) -> int:
    if args.offline:  # SUMO straight into the engine: the detectors' score in seconds, no stack
        from pipeline.sim import offline

        return offline.main(
            args.scenario, score_all=args.score, out=args.out, seeds=args.seed, duration_s=args.duration
        )
    if args.synthetic:  # the fast generator without SUMO, against the running stack (throughput)
        from pipeline.sim import synthetic

        url = f"http://{s.ingest_host}:{s.ingest_port}"
        duration = 60.0 if args.duration is None else args.duration
        return asyncio.run(synthetic.drive(url, s, devices=args.synthetic, duration=duration))
    from pipeline.sim import command

    return command.main(
        args.scenario,
        s,
        score=args.score,
        speedup=args.speedup,
        out=args.out,
        use_running=args.use_running,
        live=not args.quiet,
        seeds=args.seed,
        duration_s=args.duration,
    )


def cmd_tail(args: argparse.Namespace, s: Settings) -> int:
    from pipeline import tail
    from pipeline.feeds.bbox import parse_bbox

    try:
        if args.min_level and args.what != "conditions":
            raise ValueError("--min-level: only conditions have a level")
        flt = tail.Filter(
            bbox=parse_bbox(args.bbox) if args.bbox else None,
            cell=tail.parse_cell(args.cell, s.cell_resolution) if args.cell else None,
            min_level=args.min_level,
        )
    except ValueError as exc:
        print(f"traverz tail: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(tail.follow(s, args.what, json_lines=args.json, from_beginning=args.from_beginning, flt=flt))


def cmd_bench(args: argparse.Namespace, s: Settings) -> int:
    if args.what == "ingest":
        from pipeline.bench import ingest

        return ingest.main(s, seconds=args.seconds, rounds=args.rounds, connections=args.connections)
    if args.what == "stream":
        from pipeline.bench import stream

        plan = stream.Plan.quick() if args.quick else stream.Plan(rounds=args.rounds)
        for name in ("pings", "devices", "rate", "latency_seconds", "table_keys"):
            value = getattr(args, name)
            if value is not None:
                setattr(plan, "latency_s" if name == "latency_seconds" else name, value)
        return stream.main(s, plan)
    if args.what == "push":
        from pipeline.bench import push

        return push.main(s, clients=args.clients, seconds=args.seconds, rate=args.rate or push.RATE, rounds=args.rounds)
    print(f"traverz bench {args.what}: not built yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="traverz", description="Traverz live-traffic backend")
    p.add_argument("--log-format", choices=["text", "json"], default="", help=f"default ${_env('log_format')} (text)")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kafka", help="the embedded single-node Kafka broker (KRaft)")
    k.add_argument("action", choices=["up", "down", "status"])
    k.add_argument("--wipe", action="store_true", help="with down: delete the broker's data")
    k.set_defaults(fn=cmd_kafka)

    t = sub.add_parser("topics", help="create, describe or rescale the Traverz topics")
    t.add_argument("action", choices=["create", "describe", "rescale"])
    t.add_argument("--partitions", type=int, default=0, help=f"create: default ${_env('partitions')}; rescale: N")
    t.add_argument("--json", action="store_true", help="describe: one JSON document")
    t.add_argument("--sample", type=float, default=1.0, help="describe: seconds of offset growth for the skew")
    t.add_argument("--group", default="", help="describe: consumer group (default: the workers' app id)")
    t.add_argument("--timeout", type=float, default=1800.0, help="rescale: give up after this many seconds")
    t.set_defaults(fn=cmd_topics)

    tok = sub.add_parser("tokens", help="device tokens")
    tok.add_argument("action", choices=["issue"])
    tok.add_argument("--device", required=True)
    tok.add_argument("--ttl", type=int, default=30 * 86400, help="seconds (default 30 days)")
    tok.set_defaults(fn=cmd_tokens)

    i = sub.add_parser("ingest", help="the HTTP(S) ingest proxy")
    i.add_argument("--host", default="", help=f"default ${_env('ingest_host')}")
    i.add_argument("--port", type=int, default=0, help=f"default ${_env('ingest_port')}")
    i.add_argument("--tls-cert", default="", help=f"PEM cert, serve HTTPS; ${_env('tls_cert')}")
    i.add_argument("--tls-key", default="", help=f"PEM key; ${_env('tls_key')}")
    i.set_defaults(fn=cmd_ingest)

    w = sub.add_parser("worker", help="a faust stream worker (topologies.app)")
    w.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    w.set_defaults(fn=cmd_worker)

    pu = sub.add_parser("push", help="the WebSocket push worker")
    pu.add_argument("--host", default="", help=f"default ${_env('push_host')}")
    pu.add_argument("--port", type=int, default=0, help=f"default ${_env('push_port')}")
    pu.set_defaults(fn=cmd_push)

    sim = sub.add_parser("simulate", help="SUMO vehicles as phones through the whole stack; --score: detection quality")
    sim.add_argument(
        "--scenario", action="append", default=[], help="scenario file (repeatable; default scenarios/city.toml)"
    )
    sim.add_argument("--score", action="store_true", help="score every scenario in scenarios/ (or those named)")
    sim.add_argument("--speedup", type=float, default=None, help="sim time per wall second (default: the scenario's)")
    sim.add_argument("--out", default=".traverz/sim", help="results folder: <scenario>.json/.png, score.json")
    sim.add_argument(
        "--use-running", action="store_true", help="drive the stack at TRAVERZ_INGEST_PORT/… instead of a fresh one"
    )
    sim.add_argument("--quiet", action="store_true", help="no live incident/alert lines, only the progress bar")
    sim.add_argument(
        "--offline", action="store_true", help="no stack: SUMO's pings straight into the engine (detectors only)"
    )
    sim.add_argument("--synthetic", type=int, default=0, metavar="DEVICES", help="no SUMO: N straight-road drivers")
    sim.add_argument(
        "--duration",
        type=float,
        default=None,
        help="sim seconds instead of each scenario's (events lasting to its end are stretched); "
        "--synthetic: seconds (default 60, 0 = until Ctrl-C)",
    )
    sim.add_argument(
        "--seed",
        type=_seeds,
        action="extend",
        default=[],
        metavar="N|A-B|N,M",
        help="run each scenario once per seed instead of with its own (repeatable)",
    )
    sim.set_defaults(fn=cmd_simulate)

    ta = sub.add_parser("tail", help="follow conditions or alerts")
    ta.add_argument("what", choices=["conditions", "alerts"])
    ta.add_argument("--json", action="store_true", help="JSON lines for piping (a tombstone: value null)")
    ta.add_argument("--from-beginning", action="store_true", help="replay what the topic holds, then follow")
    where = ta.add_mutually_exclusive_group()
    where.add_argument(
        "--bbox",
        default="",
        help="S,W,N,E: cell centre (conditions) or alert position inside; write --bbox=… when S is negative",
    )
    where.add_argument("--cell", default="", help="H3 cell: that res-9 cell, or every res-9 cell inside a coarser one")
    ta.add_argument("--min-level", type=int, default=0, choices=range(6), help="conditions at this level or above")
    ta.set_defaults(fn=cmd_tail)

    b = sub.add_parser("bench", help="benchmarks against a raw baseline in the same run")
    b.add_argument("what", choices=["ingest", "stream", "push"])
    b.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    b.add_argument("--connections", type=int, default=64)
    b.add_argument("--quick", action="store_true", help="stream: small sizes, one round (~2 min)")
    b.add_argument("--pings", type=int, default=None, help="stream: pings pre-produced (default 2,000,000)")
    b.add_argument("--devices", type=int, default=None, help="stream: simulated devices (default 50,000)")
    b.add_argument(
        "--rate", type=float, default=None, help="stream: pings/s, latency phase (20,000); push: conditions/s (1,200)"
    )
    b.add_argument("--latency-seconds", type=float, default=None, help="stream: latency phase length (default 30)")
    b.add_argument("--table-keys", type=int, default=None, help="stream: table keys before restarts (default 1M)")
    b.add_argument("--clients", type=int, default=10_000, help="push: WebSocket clients (default 10,000)")
    b.set_defaults(fn=cmd_bench)

    d = sub.add_parser("demo", help="broker, topics, ingest, worker, push and simulated drivers")
    d.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until Ctrl-C)")
    d.add_argument("--devices", type=int, default=300)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = get_settings()
    args.log_config_format = args.log_format or s.log_format
    args.log_config = logs.configure(args.log_config_format, process=args.command)
    try:
        return int(args.fn(args, s))
    except kafka_local.KafkaError as exc:
        print(f"traverz: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
