"""Health of one (route, issuer) cell in event time, as small plain-JSON state.

The stream layer keeps one state per cell in a Faust table, so the state is a dict of ints and
lists (no objects, no numpy): it survives a changelog round trip unchanged. Two ring buffers of
buckets keyed by event time give sliding windows without keeping single events:

* a fine ring of 10 s buckets covering 5 minutes (the 1 min and 5 min windows), and
* a coarse ring of 60 s buckets covering 1 hour.

Each bucket counts attempts, delivered and approved attempts, each result class, and a fixed
log-spaced latency histogram (three bins per doubling, 1 ms to about 65 s, so a percentile read from
it is within about 12%). Fixed bins keep the state bounded and make histograms mergeable by
addition, across buckets and across cells or workers.

Events arrive out of order. A late event whose bucket is still inside a ring is counted in its own
bucket (windows are by event time, not arrival time); one older than the ring's span is dropped
and counted in ``late_dropped`` so the loss is visible. Attempts with an UNKNOWN result are counted
apart and left out of attempts and rates: they say nothing about the route.

Only soft declines, errors and timeouts are route failures (see :mod:`agents.routing.outcomes`), so
``success_rate`` is delivered / attempts and an issuer decline does not lower it.
"""

from __future__ import annotations

import math
from typing import Any

from agents.routing.outcomes import Outcome

__all__ = [
    "BINS_PER_DOUBLING",
    "CLASSES",
    "COARSE_MS",
    "FINE_MS",
    "LATENCY_BINS",
    "bin_lower_ms",
    "latency_bin",
    "new_state",
    "observe",
    "percentile",
    "summary",
]

FINE_MS, FINE_N = 10_000, 31  # 5 min plus the bucket being filled
COARSE_MS, COARSE_N = 60_000, 61  # 1 h plus the bucket being filled
BINS_PER_DOUBLING = 3
LATENCY_BINS = 48  # up to 2**16 ms; slower values land in the last bin

CLASSES = ("APPROVED", "ISSUER_DECLINE", "SOFT_DECLINE", "ERROR", "TIMEOUT", "UNKNOWN")
# Bucket layout: [bucket index, attempts, delivered, approved, issuer_decline, soft_decline,
#                 error, timeout, unknown, latency bins...]
_IDX, _ATT, _DEL, _APP, _ISS, _SOFT, _ERR, _TMO, _UNK = range(9)
_HIST = 9
_WIDTH = _HIST + LATENCY_BINS
_SLOTS: dict[str, tuple[int, ...]] = {
    "APPROVED": (_ATT, _DEL, _APP),
    "ISSUER_DECLINE": (_ATT, _DEL, _ISS),
    "SOFT_DECLINE": (_ATT, _SOFT),
    "ERROR": (_ATT, _ERR),
    "TIMEOUT": (_ATT, _TMO),
}
_UNKNOWN_SLOTS = (_UNK,)
_LOG2 = math.log2


def latency_bin(latency_ms: float) -> int:
    """Histogram bin of a latency: bin i holds [2**(i/3), 2**((i+1)/3)) ms (bin 0 also < 1 ms)."""
    if latency_ms < 1.0:
        return 0
    b = int(_LOG2(latency_ms) * BINS_PER_DOUBLING)
    return b if b < LATENCY_BINS else LATENCY_BINS - 1


def bin_lower_ms(b: int) -> float:
    return float(2.0 ** (b / BINS_PER_DOUBLING))


def new_state() -> dict[str, Any]:
    return {"fine": [None] * FINE_N, "coarse": [None] * COARSE_N,
            "newest": [-1, -1], "late_dropped": [0, 0]}


def _add(ring: list[Any], newest: list[int], late: list[int], which: int, idx: int,
         n: int, slots: tuple[int, ...], hbin: int) -> None:
    if idx > newest[which]:
        newest[which] = idx
    elif idx <= newest[which] - n:
        late[which] += 1
        return
    slot = idx % n
    b = ring[slot]
    if b is None or b[0] != idx:  # a stale bucket (or none): start this one afresh
        b = [0] * _WIDTH
        b[0] = idx
        ring[slot] = b
    for i in slots:
        b[i] += 1
    if hbin >= 0:
        b[hbin] += 1


def observe(state: dict[str, Any] | None, outcome: Outcome) -> dict[str, Any]:
    """Count one outcome in its event-time buckets; returns the (updated in place) state.

    Callers holding the state in a Faust table must assign it back (``table[key] = state``): the
    table only writes its changelog on assignment.
    """
    if state is None:
        state = new_state()
    slots = _SLOTS.get(outcome.result)
    if slots is None:
        slots, hbin = _UNKNOWN_SLOTS, -1
    else:
        hbin = _HIST + latency_bin(outcome.latency_ms)
    ms = outcome.event_ms
    newest, late = state["newest"], state["late_dropped"]
    _add(state["fine"], newest, late, 0, ms // FINE_MS, FINE_N, slots, hbin)
    _add(state["coarse"], newest, late, 1, ms // COARSE_MS, COARSE_N, slots, hbin)
    return state


def percentile(hist: list[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a latency histogram, interpolated geometrically in its bin."""
    total = sum(hist)
    if total == 0:
        return None
    target = q * total
    cum = 0
    for b, count in enumerate(hist):
        if count and cum + count >= target:
            frac = (target - cum) / count
            lo = bin_lower_ms(b)
            return lo * float(2.0 ** (frac / BINS_PER_DOUBLING))
        cum += count
    return bin_lower_ms(LATENCY_BINS)  # unreachable unless q > 1


def summary(state: dict[str, Any] | None, now_ms: int, window_s: float) -> dict[str, Any]:
    """Counts, rates and latency percentiles over the last ``window_s`` seconds of event time.

    Windows of at most 5 minutes read the fine ring, longer ones (up to 1 hour) the coarse ring.
    The window is whole buckets: the bucket holding ``now_ms`` and the ones before it, so it
    covers between ``window_s - width`` and ``window_s`` seconds of history.
    """
    if window_s <= (FINE_N - 1) * FINE_MS / 1000:
        ring_name, width, which = "fine", FINE_MS, 0
    else:
        ring_name, width, which = "coarse", COARSE_MS, 1
        window_s = min(window_s, (COARSE_N - 1) * COARSE_MS / 1000)
    total = [0] * _WIDTH
    late = 0
    if state is not None:
        late = int(state["late_dropped"][which])
        now_idx = now_ms // width
        oldest = now_idx - max(1, math.ceil(window_s * 1000 / width))
        for b in state[ring_name]:
            if b is not None and oldest < b[0] <= now_idx:
                for i in range(1, _WIDTH):
                    total[i] += b[i]
    attempts, delivered, approved = total[_ATT], total[_DEL], total[_APP]
    hist = total[_HIST:]
    return {
        "window_s": window_s,
        "attempts": attempts,
        "delivered": delivered,
        "approvals": approved,
        "success_rate": delivered / attempts if attempts else None,
        "approval_rate": approved / attempts if attempts else None,
        "counts": {"APPROVED": approved, "ISSUER_DECLINE": total[_ISS],
                   "SOFT_DECLINE": total[_SOFT], "ERROR": total[_ERR],
                   "TIMEOUT": total[_TMO], "UNKNOWN": total[_UNK]},
        "p50_latency_ms": percentile(hist, 0.50),
        "p95_latency_ms": percentile(hist, 0.95),
        "p99_latency_ms": percentile(hist, 0.99),
        "late_dropped": late,
    }
