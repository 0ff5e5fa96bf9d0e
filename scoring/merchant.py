"""Merchant and device state: the incremental half of ``merchant_fraud_rate_7d`` and
``device_reputation_score`` (their definitions are the FeatureSpecs in ``scoring.features``).

Why a module of its own: the state is keyed differently from the card's and the terminal's. The
worker keeps it in the merchant's scoring partition (the hand-over is keyed by merchant, and
every terminal belongs to one merchant), under namespaced keys that cannot collide with terminal
ids: ``merchant_key`` and ``device_key``. A device is therefore seen as one merchant's partition
sees it: card testing (one device, many cards, one shop) shows in full, a fraud ring's device
used at many shops shows per shop. A third repartition hop, by device, would see it whole; we do
not pay for one.

The same properties as ``scoring.features``:

- idempotent: a transaction is an entry keyed by (time, id), a fraud label an entry keyed by
  transaction id (the earliest known_at wins), so a repeat changes nothing;
- event time only: features at t count transactions with time <= t and labels with
  known_at <= t, whenever they arrived, so a label released early is not counted early. In the
  worker the labels known by t have all arrived when t is decided (the watermark gate holds it
  until then); payments from other card partitions count once they have arrived, which live is
  milliseconds and a replay at full speed can stretch (the gate waits for those only up to
  t - 7 days, what terminal risk needs). The offline builder sees them all;
- bounded: entries no window can reach are pruned relative to the newest transaction time
  seen (keeping ``LATENESS_MS`` more), and caps keep a busy merchant or device finite.

Only gateway-shaped transactions have this state (``has_merchant``): the handbook replay names
each terminal as its own merchant and has no devices, so its rows leave the features out.
"""

from __future__ import annotations

import bisect
from typing import Any

from scoring.features import DAY_MS, HOUR_MS, LATENESS_MS, _locate, _prune

MERCHANT_WINDOW_MS = 7 * DAY_MS
DEVICE_CARDS_WINDOW_MS = 24 * HOUR_MS
DEVICE_FRAUD_WINDOW_MS = 30 * DAY_MS
# A merchant's transactions kept for the rate's denominator; busier merchants' counts cover the
# span the kept ones reach back to (numerator and denominator alike, so the rate stays a rate).
MAX_MERCHANT_ENTRIES = 2048
MAX_DEVICE_ENTRIES = 256
MAX_FRAUD_ENTRIES = 512
# Device reputation: cards in a day at which the card part saturates, known frauds likewise.
DEVICE_CARDS_FULL = 10
DEVICE_FRAUDS_FULL = 3
NO_DEVICE_SCORE = 0.0  # no device, no evidence: the value a clean single-card device gets


def has_merchant(merchant_id: str | None, terminal_id: str | None) -> bool:
    """A transaction carries merchant data: a merchant id that is not just its terminal's (the
    handbook replay, which has no merchants, names each terminal as its own merchant)."""
    return bool(merchant_id) and merchant_id != terminal_id


def merchant_key(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def device_key(merchant_id: str, device_id: str) -> str:
    return f"device:{merchant_id}:{device_id}"


def _new(t_ms: int, *columns: str) -> dict[str, Any]:
    state: dict[str, Any] = {c: [] for c in columns}
    state["fk"] = {}
    state["newest"] = t_ms
    return state


def _add_tx(state: dict[str, Any], tx_id: str, t_ms: int, horizon_ms: int, cap: int,
            extra: tuple[str, Any] | None = None) -> None:
    """Insert (t_ms, tx_id) once into the sorted columns, then prune to horizon and cap."""
    times: list[int] = state["t"]
    state["newest"] = newest = max(state["newest"], t_ms)
    cutoff = newest - horizon_ms - LATENESS_MS
    columns = [times, state["id"]] + ([state[extra[0]]] if extra else [])
    if t_ms > cutoff:
        at, present = _locate(times, state["id"], t_ms, tx_id)
        if not present:
            times.insert(at, t_ms)
            state["id"].insert(at, tx_id)
            if extra:
                state[extra[0]].insert(at, extra[1])
    _prune(columns, cutoff, cap)


def _add_fraud(state: dict[str, Any], tx_id: str, t_ms: int, known_ms: int) -> None:
    """Record a fraud label once per transaction: the earliest known_at wins."""
    state["newest"] = max(state["newest"], t_ms)
    old = state["fk"].get(tx_id)
    if old is None or known_ms < old[1]:
        state["fk"][tx_id] = [t_ms, known_ms]


def _prune_frauds(state: dict[str, Any], horizon_ms: int, by_known: bool) -> None:
    """Drop fraud labels no window can reach, by their known_at (merchant) or their
    transaction's time (device), then the oldest beyond the cap."""
    frauds: dict[str, list[int]] = state["fk"]
    cutoff = state["newest"] - horizon_ms - LATENESS_MS
    at = 1 if by_known else 0
    for k in [k for k, entry in frauds.items() if entry[at] <= cutoff]:
        del frauds[k]
    if len(frauds) > MAX_FRAUD_ENTRIES:
        for k in sorted(frauds, key=lambda k: (frauds[k][1], k))[:len(frauds) - MAX_FRAUD_ENTRIES]:
            del frauds[k]


# -- merchant ----------------------------------------------------------------------------------


def merchant_observe_tx(state: dict[str, Any] | None, tx_id: str, t_ms: int) -> dict[str, Any]:
    """Record a transaction at the merchant (once). Updated in place and returned."""
    t_ms = int(t_ms)
    state = state if state is not None else _new(t_ms, "t", "id")
    _add_tx(state, tx_id, t_ms, MERCHANT_WINDOW_MS, MAX_MERCHANT_ENTRIES)
    _prune_frauds(state, MERCHANT_WINDOW_MS, by_known=True)
    return state


def merchant_observe_fraud(state: dict[str, Any] | None, tx_id: str, t_ms: int,
                           known_ms: int) -> dict[str, Any]:
    """Record a fraud label (FRAUD or CHARGEBACK) for the merchant's transaction ``tx_id`` made
    at ``t_ms`` and known at ``known_ms``. Genuine labels change nothing here."""
    t_ms = int(t_ms)
    state = state if state is not None else _new(t_ms, "t", "id")
    _add_fraud(state, tx_id, t_ms, int(known_ms))
    _prune_frauds(state, MERCHANT_WINDOW_MS, by_known=True)
    return state


def merchant_fraud_rate(state: dict[str, Any], t_ms: int) -> float:
    """Frauds known in (t-7d, t] / the merchant's transactions in (t-7d, t]; 0 when none known."""
    t_ms = int(t_ms)
    times: list[int] = state["t"]
    lo = t_ms - MERCHANT_WINDOW_MS
    if len(times) >= MAX_MERCHANT_ENTRIES:  # saturated: the span the kept entries cover
        lo = max(lo, times[0] - 1)
    end = bisect.bisect_right(times, t_ms)
    count = end - bisect.bisect_right(times, lo, 0, end)
    frauds = sum(1 for _, known in state["fk"].values() if lo < known <= t_ms)
    return frauds / count if count and frauds else 0.0


# -- device at a merchant ----------------------------------------------------------------------


def device_observe_tx(state: dict[str, Any] | None, tx_id: str, t_ms: int,
                      card: str) -> dict[str, Any]:
    """Record a transaction of ``card`` on the device at this merchant (once)."""
    t_ms = int(t_ms)
    state = state if state is not None else _new(t_ms, "t", "id", "c")
    _add_tx(state, tx_id, t_ms, DEVICE_CARDS_WINDOW_MS, MAX_DEVICE_ENTRIES, ("c", card))
    _prune_frauds(state, DEVICE_FRAUD_WINDOW_MS, by_known=False)
    return state


def device_observe_fraud(state: dict[str, Any] | None, tx_id: str, t_ms: int,
                         known_ms: int) -> dict[str, Any]:
    """Record a fraud label for the device's transaction ``tx_id`` at this merchant."""
    t_ms = int(t_ms)
    state = state if state is not None else _new(t_ms, "t", "id", "c")
    _add_fraud(state, tx_id, t_ms, int(known_ms))
    _prune_frauds(state, DEVICE_FRAUD_WINDOW_MS, by_known=False)
    _prune([state["t"], state["id"], state["c"]],
           state["newest"] - DEVICE_CARDS_WINDOW_MS - LATENESS_MS, MAX_DEVICE_ENTRIES)
    return state


def device_reputation(state: dict[str, Any] | None, t_ms: int) -> float:
    """min(1, (distinct cards in (t-24h, t] - 1) / 9 + known frauds in (t-30d, t] / 3)."""
    if state is None:
        return NO_DEVICE_SCORE
    t_ms = int(t_ms)
    times: list[int] = state["t"]
    end = bisect.bisect_right(times, t_ms)
    lo = bisect.bisect_right(times, t_ms - DEVICE_CARDS_WINDOW_MS, 0, end)
    cards = len(set(state["c"][lo:end]))
    frauds = sum(1 for t, known in state["fk"].values()
                 if t_ms - DEVICE_FRAUD_WINDOW_MS < t <= t_ms and known <= t_ms)
    card_part = max(0, cards - 1) / (DEVICE_CARDS_FULL - 1)
    return min(1.0, card_part + frauds / DEVICE_FRAUDS_FULL)


# -- both, as the worker and the offline builder use them --------------------------------------


def observe_tx(table: Any, tx: Any, t_ms: int) -> dict[str, Any]:
    """The merchant and device entries a gateway-shaped transaction changes, by key (empty for
    any other). ``table`` maps keys to state (read only); ``tx`` has the transaction's fields."""
    merchant, terminal = tx.get("merchant_id"), tx.get("terminal_id")
    if not has_merchant(merchant, terminal):
        return {}
    key = merchant_key(merchant)
    out = {key: merchant_observe_tx(table.get(key), tx["transaction_id"], t_ms)}
    device = tx.get("device_id")
    if device:
        dkey = device_key(merchant, device)
        out[dkey] = device_observe_tx(table.get(dkey), tx["transaction_id"], t_ms,
                                      tx["card_token"])
    return out


def observe_label(table: Any, label: Any, t_ms: int, known_ms: int,
                  fraud: bool) -> dict[str, Any]:
    """The entries a label changes, by key: a fraud label with a merchant counts towards the
    merchant (and its device, if it names one); anything else changes nothing here."""
    merchant, terminal = label.get("merchant_id"), label.get("terminal_id")
    if not fraud or not has_merchant(merchant, terminal):
        return {}
    key = merchant_key(merchant)
    out = {key: merchant_observe_fraud(table.get(key), label["transaction_id"], t_ms, known_ms)}
    device = label.get("device_id")
    if device:
        dkey = device_key(merchant, device)
        out[dkey] = device_observe_fraud(table.get(dkey), label["transaction_id"], t_ms,
                                         known_ms)
    return out


def features(table: Any, tx: Any, t_ms: int) -> dict[str, float]:
    """Both features of a gateway-shaped transaction, read after ``observe_tx``; {} otherwise."""
    merchant, terminal = tx.get("merchant_id"), tx.get("terminal_id")
    if not has_merchant(merchant, terminal):
        return {}
    state = table.get(merchant_key(merchant))
    device = tx.get("device_id")
    return {
        "merchant_fraud_rate_7d": merchant_fraud_rate(state, t_ms) if state else 0.0,
        "device_reputation_score": device_reputation(
            table.get(device_key(merchant, device)) if device else None, t_ms),
    }
