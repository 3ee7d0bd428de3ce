"""Deadline scheduling and measured capacity of the generation worker.

Each session plays its buffered frames at `fps`; its next chunk is due when they run out:
`slack_s = frames buffered / fps`. The worker serves the ready sessions with the least slack
first (ties: the one served longest ago), up to `max_batch` rows in one batched chunk, so no
session starves while another is served twice. A batch starts when its earliest member is due,
that is when waiting longer would make it late by the batch's expected time
(`BatchCost.estimate_ms`, with a safety factor): until then, sessions that become ready join it,
and every member starts from fresher input. The worker waits only when that batch is all it has
to do; with ready sessions left over it is behind, and idling would lose their time.

`BatchCost` keeps the measured wall time of a batched chunk per row count (an exponential moving
average, so a machine that gets busier is followed within a few chunks). A row count not measured
for `max_age_s` is forgotten while fresher ones exist: the worker cuts batches that its figures say
are too slow, and would otherwise never measure them again after a slow spell. From it, `capacity`
is the most sessions whose chunks all fit one chunk period (frames per chunk / fps) with a margin:
the server admits no more than that (app.server), besides its fixed `max_sessions`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# The chunk's expected time is scaled by this before it is compared with the slack, plus a fixed
# margin: a chunk a little slower than its average must still land before the buffer runs dry.
SAFETY = 1.1
MARGIN_S = 0.02
# The share of a chunk period that the measured batches may fill for a session count to be admitted.
UTILISATION = 0.9


@dataclass(frozen=True)
class CostPoint:
    rows: int
    ms: float


class BatchCost:
    """Measured wall ms of a batched chunk by its rows (see the module docstring). Not thread-safe:
    the worker observes, other threads read `capacity` (a float read; a stale value is harmless)."""

    def __init__(self, smoothing: float = 0.3, max_age_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.smoothing = smoothing
        self.max_age_s = max_age_s
        self._clock = clock
        self._ms: dict[int, float] = {}
        self._seen_t: dict[int, float] = {}

    def observe(self, rows: int, ms: float) -> None:
        if rows < 1 or not (math.isfinite(ms) and ms >= 0):
            raise ValueError(f"a batch needs rows >= 1 and a finite time, got {rows} rows in {ms} ms")
        old = self._ms.get(rows)
        self._ms[rows] = ms if old is None else old + self.smoothing * (ms - old)
        self._seen_t[rows] = now = self._clock()
        for n, seen in list(self._seen_t.items()):
            if now - seen > self.max_age_s:
                del self._ms[n], self._seen_t[n]

    @property
    def points(self) -> list[CostPoint]:
        return [CostPoint(n, ms) for n, ms in sorted(self._ms.items())]

    def estimate_ms(self, rows: int) -> float | None:
        """Expected ms of a batch of `rows`: measured, else on the line through the measured points
        (least squares; through the origin with one point, which overestimates larger batches, the safe
        side for admission); None before any measurement."""
        if rows in self._ms:
            return self._ms[rows]
        points = self.points
        if not points:
            return None
        if len(points) == 1:
            return points[0].ms * rows / points[0].rows
        n = len(points)
        mean_x = sum(p.rows for p in points) / n
        mean_y = sum(p.ms for p in points) / n
        sxx = sum((p.rows - mean_x) ** 2 for p in points)
        slope = sum((p.rows - mean_x) * (p.ms - mean_y) for p in points) / sxx
        # A batch never costs less per added row than nothing: a noisy fit must not promise free rows.
        slope = max(slope, 0.05 * mean_y / mean_x)
        return max(mean_y + slope * (rows - mean_x), 0.0)

    def cycle_ms(self, sessions: int, max_batch: int) -> float | None:
        """Expected ms to give each of `sessions` one chunk in batches of at most `max_batch`."""
        full, rest = divmod(sessions, max_batch)
        parts = [self.estimate_ms(max_batch)] * full + ([self.estimate_ms(rest)] if rest else [])
        if any(p is None for p in parts):
            return None
        return sum(parts)

    def capacity(self, period_s: float, max_batch: int, limit: int) -> int | None:
        """The most sessions (1 … `limit`) whose chunks fit `UTILISATION` of one chunk period
        `period_s`; at least 1; None before any measurement."""
        if not self._ms:
            return None
        best = 1
        for sessions in range(1, limit + 1):
            cycle = self.cycle_ms(sessions, max_batch)
            if cycle is None or cycle > UTILISATION * period_s * 1e3:
                break
            best = sessions
        return best


def due_in_s(slack_s: float, batch_ms: float | None) -> float:
    """Seconds until a batch whose earliest member has `slack_s` of frames left must start; 0 when
    its time is unknown (start at once)."""
    if batch_ms is None:
        return 0.0
    return max(0.0, slack_s - (SAFETY * batch_ms / 1e3 + MARGIN_S))
