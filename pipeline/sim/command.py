"""``traverz simulate``: scenarios through a stack of their own, then the table, JSON and picture."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.settings import Settings
from pipeline.sim import picture, report, stack
from pipeline.sim.run import Endpoints, default_say, simulate, stderr_progress
from pipeline.sim.scenario import Scenario, ScenarioError, load, repo_scenarios, vary

DEFAULT_SCENARIO = "city"


def pick(
    paths: list[str], all_: bool, seeds: list[int] | None = None, duration_s: float | None = None
) -> list[Scenario]:
    """The scenarios named, else every one in the repo (``all_``), else the default one;
    each once per seed of ``seeds`` (else with its own) and ``duration_s`` long (else its own)."""
    files = [Path(p) for p in paths] or [p for p in repo_scenarios() if all_ or p.stem == DEFAULT_SCENARIO]
    each: list[int | None] = list(seeds) if seeds else [None]
    out = []
    for f in files:
        sc = load(f)
        for seed in each:
            out.append(sc if seed is None and duration_s is None else vary(sc, seed=seed, duration_s=duration_s))
    return out


def run_one(
    sc: Scenario, s: Settings, out: Path, *, speedup: float | None, use_running: bool, live: bool
) -> dict[str, Any]:
    """One scenario end to end; writes ``<out>/<name>.json`` and ``.png``."""
    st = None
    if not use_running:
        st = stack.start(s, out / "logs" / sc.name, routing_net=sc.network)
        s = st.settings
    ends = Endpoints(
        f"http://{s.ingest_host}:{s.ingest_port}", f"ws://{s.push_host}:{s.push_port}/v1/stream", s.bootstrap
    )
    try:
        print(f"[sim] {sc.name}: {sc.description}".rstrip(": "), file=sys.stderr, flush=True)
        run = asyncio.run(
            simulate(
                sc,
                ends,
                s,
                speedup=speedup,
                say=default_say() if live else None,
                progress=stderr_progress(sc.duration_s),
            )
        )
        print(file=sys.stderr)
    finally:
        if st is not None:
            st.stop()
    res = report.result(run)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{sc.name}.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    picture.draw(run.net, res, out / f"{sc.name}.png")
    return res


def main(
    paths: list[str],
    s: Settings,
    *,
    score: bool,
    speedup: float | None,
    out: str | Path,
    use_running: bool = False,
    live: bool = True,
    seeds: list[int] | None = None,
    duration_s: float | None = None,
) -> int:
    out = Path(out)
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one line per request drowns the live output
    try:
        scenarios = pick(paths, all_=score, seeds=seeds, duration_s=duration_s)
    except ScenarioError as exc:
        print(f"traverz simulate: {exc}", file=sys.stderr)
        return 2
    if not scenarios:
        print("traverz simulate: no scenario files found", file=sys.stderr)
        return 2
    started = time.time()
    results = [run_one(sc, s, out, speedup=speedup, use_running=use_running, live=live) for sc in scenarios]
    print(report.table(results))
    summary = {"results": [r["scenario"] for r in results], "wall_s": round(time.time() - started, 1)}
    if score:
        from pipeline.sim.score import merged

        summary["all"] = merged([r["score"] for r in results])
        (out / "score.json").write_bytes(orjson.dumps({**summary, "scenarios": results}, option=orjson.OPT_INDENT_2))
    print(f"results: {out}/<scenario>.json and .png" + (f", {out}/score.json" if score else ""))
    return 0
