"""Per-card transaction velocity in event time.

The state per card is the list of its recent (event time, transaction id) pairs, pruned to the
longest window. Keeping ids, not just counts, makes the update idempotent: a transaction replayed
after a crash (at-least-once delivery) is not counted twice, so the re-issued verdict matches the
first one. Counting only entries at or before the current event time makes the value independent of
arrival order, which is what lets a replay of history reproduce live values.
"""

from __future__ import annotations

from collections.abc import Sequence

HOUR_MS = 3_600_000
WINDOWS_MS = {"1h": HOUR_MS, "24h": 24 * HOUR_MS}
HORIZON_MS = max(WINDOWS_MS.values())
# A card-testing burst can be thousands of attempts; past this the counts saturate rather than the
# state growing without bound. 2,000 in 24 h is far beyond any threshold a rule or model uses.
MAX_ENTRIES = 2_000

Entry = tuple[int, str]


def record(history: Sequence[Sequence[object]], event_ms: int, transaction_id: str) -> list[Entry]:
    """Return the card's history with this transaction added (once) and expired entries dropped."""
    entries: list[Entry] = [(int(ts), str(tid)) for ts, tid in history]  # type: ignore[call-overload]
    if any(tid == transaction_id for _, tid in entries):
        return entries
    entries.append((event_ms, transaction_id))
    newest = max(ts for ts, _ in entries)
    kept = [e for e in entries if e[0] > newest - HORIZON_MS]
    kept.sort()
    return kept[-MAX_ENTRIES:]


def counts(history: Sequence[Entry], event_ms: int) -> dict[str, int]:
    """Transactions of the card in each window ending at event_ms (this one included)."""
    return {
        name: sum(1 for ts, _ in history if event_ms - width < ts <= event_ms)
        for name, width in WINDOWS_MS.items()
    }
