"""``traverz topics describe``: every topic, its layout, its offsets, the workers' lag and the skew.

H3 keys concentrate on downtown cells, so some partitions carry far more traffic than
others; the busiest partition bounds what one worker can keep up with. Skew is shown as
max/mean of the per-partition *growth* over a short sample (what flows now), or of the end
offsets when nothing flowed during the sample (what has accumulated).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.ops import control, kafkaview
from pipeline.settings import Settings, generation_app_id

BAR = 30


@dataclass
class PartitionView:
    partition: int
    end_offset: int
    growth_per_s: float
    committed: int | None
    lag: int | None
    share: float  # of the topic's traffic (growth, else end offsets)


@dataclass
class TopicView:
    name: str
    partitions: int
    replication: int
    cleanup_policy: str
    end_offsets_total: int
    lag_total: int | None
    skew: float  # max/mean over partitions; 1.0 = even
    skew_by: str  # "growth" or "end_offsets"
    detail: list[PartitionView] = field(default_factory=list)


@dataclass
class Description:
    generation: int
    group: str
    group_state: str
    group_members: int
    sample_s: float
    topics: list[TopicView]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def skew(values: list[float]) -> float:
    """max/mean (1.0 for an even spread or no data)."""
    total = sum(values)
    if not values or total <= 0:
        return 1.0
    return max(values) / (total / len(values))


def view(
    info: kafkaview.TopicInfo,
    first: dict[int, int],
    last: dict[int, int],
    done: dict[int, int] | None,
    sample_s: float,
) -> TopicView:
    """One topic's view from two end-offset snapshots ``sample_s`` apart and the group's commits (or None)."""
    growth = {p: (last.get(p, 0) - first.get(p, 0)) / sample_s if sample_s > 0 else 0.0 for p in last}
    by_growth = sum(growth.values()) > 0
    weights = growth if by_growth else {p: float(v) for p, v in last.items()}
    total_w = sum(weights.values())
    lags = kafkaview.lag(last, done) if done is not None else None
    detail = [
        PartitionView(
            partition=p,
            end_offset=last[p],
            growth_per_s=round(growth[p], 2),
            committed=None if done is None else done.get(p),
            lag=None if lags is None else lags[p],
            share=round(weights[p] / total_w, 4) if total_w else 0.0,
        )
        for p in sorted(last)
    ]
    return TopicView(
        name=info.name,
        partitions=info.partitions,
        replication=info.replication,
        cleanup_policy=info.cleanup_policy,
        end_offsets_total=sum(last.values()),
        lag_total=None if lags is None else sum(lags.values()),
        skew=round(skew(list(weights.values())), 3),
        skew_by="growth" if by_growth else "end_offsets",
        detail=detail,
    )


async def describe(settings: Settings, sample_s: float = 1.0, group: str = "") -> Description:
    """Every non-internal topic; lag of ``group`` (default: the current generation's worker app id)."""
    state = await control.read(settings)
    generation = state.current(settings.generation)
    group = group or generation_app_id(settings.app_id, generation)
    async with (
        kafkaview.admin_client(settings.bootstrap) as admin,
        kafkaview.offsets_consumer(settings.bootstrap) as consumer,
    ):
        infos = await kafkaview.topics(admin)
        counts = {i.name: i.partitions for i in infos}
        t0 = time.monotonic()
        first = await kafkaview.end_offsets(consumer, counts)
        if sample_s > 0:
            await asyncio.sleep(sample_s)
        last = await kafkaview.end_offsets(consumer, counts)
        elapsed = time.monotonic() - t0 if sample_s > 0 else 0.0
        done = await kafkaview.committed(admin, group)
        gstate, members = await kafkaview.group_state(admin, group)
    views = [view(i, first.get(i.name, {}), last.get(i.name, {}), done.get(i.name), elapsed) for i in infos]
    return Description(generation, group, gstate, members, round(elapsed, 3), views)


def bar(share: float, top: float) -> str:
    n = 0 if top <= 0 else round(BAR * share / top)
    return "█" * n + "·" * (BAR - n)


def render(d: Description) -> str:
    """The human table: one block per topic, one line per partition with a bar of its traffic share."""
    lines = [
        f"generation {d.generation} · worker group {d.group} ({d.group_state}, {d.group_members} members)"
        f" · growth sampled over {d.sample_s:.1f}s"
    ]
    for t in d.topics:
        lag = "—" if t.lag_total is None else str(t.lag_total)
        lines.append("")
        lines.append(
            f"{t.name}  partitions {t.partitions}  replication {t.replication}  cleanup {t.cleanup_policy}"
            f"  end {t.end_offsets_total}  lag {lag}  skew {t.skew:.2f}× ({t.skew_by})"
        )
        top = max((p.share for p in t.detail), default=0.0)
        for p in t.detail:
            plag = "—" if p.lag is None else str(p.lag)
            lines.append(
                f"  p{p.partition:<3} end {p.end_offset:>10}  {p.growth_per_s:>9.1f}/s  lag {plag:>8}"
                f"  {bar(p.share, top)} {100 * p.share:5.1f}%"
            )
    return "\n".join(lines)
