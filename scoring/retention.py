"""When a state key may be forgotten: its newest event is older than anything it can still serve.

Pruning keeps each key's *entries* within its windows (``scoring.features``, ``scoring.merchant``),
but the *key* stays: a card that stops paying, a device seen once at a web shop, a terminal taken
out of service. Live traffic brings such keys without end (every card-testing device is new), so
without this the worker's memory grows for as long as it runs. A key expires when its newest
event is older than its retention at its partition's event time:

- terminal, merchant and device keys: ``TERMINAL_RETENTION_MS``, the longest window any of them
  reads (terminal risk: the week's label delay plus 30 days) plus twice the lateness. Forgetting
  them is lossless: their entries are all out of every window, and an event late enough to find
  them gone would have been too late to count anyway, so every feature comes out as it would
  have with the key kept.
- cards: ``CARD_RETENTION_MS`` (90 days). Their windows end after 31 days, but the profile (the
  account's age, its home country and place) is kept past pruning; a card silent for 90 days is
  a new card when it comes back (account age 0, home learned again). That is a policy, and the
  one place where expiry changes a feature.
- anything else the terminal store holds (what a partition has learned, the transactions it
  remembers for their labels: ``streams.worker.learning``) never expires here; its owner bounds it.

    if card_expired(card, stored, now_ms): store.delete(partition, card)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scoring.features import DAY_MS, LATENESS_MS, TERMINAL_HORIZON_MS

CARD_RETENTION_MS = 90 * DAY_MS
TERMINAL_RETENTION_MS = TERMINAL_HORIZON_MS + LATENESS_MS
# Keys of the terminal store that are not feature state (streams.worker.learning owns them).
NOT_FEATURE_STATE = ("learned:", "scored:")


def _newest(columns: Mapping[str, Any] | None) -> int | None:
    times = columns.get("t") if columns else None
    return int(times[-1]) if times else None


def card_last_event_ms(stored: Mapping[str, Any]) -> int | None:
    """The newest event a card-store value holds: a transaction (features and near-threshold
    amounts) or an authorization outcome; None if it holds none."""
    seen = [t for t in (_newest(stored.get("features")), _newest(stored.get("outcomes")))
            if t is not None]
    seen.extend(int(entry[0]) for entry in stored.get("amounts") or ())
    return max(seen) if seen else None


def card_expired(key: str, stored: Mapping[str, Any], now_ms: int) -> bool:
    """The card has been silent for longer than ``CARD_RETENTION_MS`` of event time. (Called for
    every key in turn: a card whose newest transaction is recent is answered at once.)"""
    cutoff = now_ms - CARD_RETENTION_MS
    newest = _newest(stored.get("features"))
    if newest is not None and newest >= cutoff:
        return False
    last = card_last_event_ms(stored)
    return last is None or last < cutoff


def terminal_last_event_ms(state: Mapping[str, Any]) -> int:
    """The newest event a terminal, merchant or device state holds: its ``newest`` transaction
    time, or a fraud label's known_at if later (a merchant counts a fraud from then on)."""
    known = [int(entry[1]) for entry in (state.get("fk") or {}).values()]
    return max([int(state["newest"]), *known])


def terminal_expired(key: str, state: Any, now_ms: int) -> bool:
    """A terminal, merchant or device key whose newest event is older than
    ``TERMINAL_RETENTION_MS``; never a key of what a partition learned. (Called for every key in
    turn, so it answers the common case, a key in use, with one comparison.)"""
    if key.startswith(NOT_FEATURE_STATE) or type(state) is not dict or "newest" not in state:
        return False
    cutoff = now_ms - TERMINAL_RETENTION_MS
    if state["newest"] >= cutoff:
        return False
    return terminal_last_event_ms(state) < cutoff
