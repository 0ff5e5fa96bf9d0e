"""Every model feature: its definition, which data can supply it, and its incremental state.

One module, so the offline builder and the streaming worker cannot drift apart: both call the same
``*_observe`` functions to update per-card and per-terminal state and the same ``*_features``
functions to read it. State is plain JSON (lists, dicts, numbers, strings) because the worker keeps
it in Faust tables whose changelog topics must be able to serialise it.

Three properties make the state safe under at-least-once delivery and replays:

- idempotent: a transaction or label seen twice changes nothing (entries are keyed by id);
- order-independent: features at time t count only entries with time <= t, and pruning is relative
  to the newest time seen, so the final state depends on the set of events, not their order
  (as long as an event is no later than ``LATENESS_MS`` behind the newest one);
- bounded: entries no window can reach are pruned, and a hard cap keeps a pathological card or
  terminal from growing without limit (counts then saturate).

The handbook's 15 baseline features follow its own definitions exactly (``TARGETS.md`` section 1);
``scoring.handbook.compare_with_reference`` checks them against the published reference columns.
The extra features each earned their place on the Chapter 5 validation folds (``scoring.train``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SOURCES = ("handbook", "gateway")

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WINDOW_DAYS = (1, 7, 30)
# A label is known one week after its transaction (the handbook's protocol); terminal risk only
# ever looks at transactions at least this old, so a feature never uses a label before it exists.
LABEL_DELAY_MS = 7 * DAY_MS
# How far behind the newest event a late event may arrive and still be counted exactly. Pruning
# keeps this much history beyond the longest window.
LATENESS_MS = DAY_MS
CARD_HORIZON_MS = max(WINDOW_DAYS) * DAY_MS + LATENESS_MS
TERMINAL_HORIZON_MS = LABEL_DELAY_MS + max(WINDOW_DAYS) * DAY_MS + LATENESS_MS
# Caps: the busiest handbook card has about 130 transactions in 31 days and the busiest terminal
# about 80 in 38 days; past the caps the oldest entries go and the counts saturate.
MAX_CARD_ENTRIES = 256
MAX_TERMINAL_ENTRIES = 512
# The handbook's scenario 1 marks every transaction above this amount as fraud. A tree finds the
# split only if a histogram bin edge falls on it; this flag puts the edge there.
AMOUNT_THRESHOLD = 220.0
# Values for "no history": the card's window holds only the current transaction.
NO_HISTORY_RATIO = -1.0
NO_PREVIOUS_S = float(max(WINDOW_DAYS) * DAY_MS // SECOND_MS)

# Terminal entry flags (bit set): its transaction was seen; it was labelled fraud; labelled genuine.
_SEEN, _FRAUD, _GENUINE = 1, 2, 4


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: the name the model knows it by, what it means, who can supply it."""

    name: str
    definition: str
    sources: tuple[str, ...]
    entity: str  # "transaction" | "card" | "terminal": whose state it is read from


def _baseline() -> list[FeatureSpec]:
    both = ("handbook", "gateway")
    specs = [
        FeatureSpec("TX_AMOUNT", "the transaction's amount", both, "transaction"),
        FeatureSpec("TX_DURING_WEEKEND", "1 if the transaction is on a Saturday or Sunday (UTC)",
                    both, "transaction"),
        FeatureSpec("TX_DURING_NIGHT", "1 if the transaction's hour (UTC) is 0..6", both,
                    "transaction"),
    ]
    for n in WINDOW_DAYS:
        specs.append(FeatureSpec(
            f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW",
            f"the card's transactions in (t-{n}d, t], this one included", both, "card"))
        specs.append(FeatureSpec(
            f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW",
            f"mean amount of the card's transactions in (t-{n}d, t], this one included", both,
            "card"))
    for n in WINDOW_DAYS:
        specs.append(FeatureSpec(
            f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW",
            f"the terminal's transactions in (t-7d-{n}d, t-7d]: old enough for labels to be known",
            both, "terminal"))
        specs.append(FeatureSpec(
            f"TERMINAL_ID_RISK_{n}DAY_WINDOW",
            f"share of the terminal's transactions in (t-7d-{n}d, t-7d] labelled fraud; 0 when "
            "there are none", both, "terminal"))
    return specs


FEATURES: tuple[FeatureSpec, ...] = (
    *_baseline(),
    FeatureSpec("TX_AMOUNT_OVER_220", "1 if the amount is above 220, the sharp threshold the "
                "handbook's fraud scenario 1 draws", ("handbook",), "transaction"),
    FeatureSpec("CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW",
                "amount / mean amount of the card's OTHER transactions in (t-7d, t]; -1 when "
                "there are none (a stolen card is drained with unusual amounts)",
                ("handbook", "gateway"), "card"),
    FeatureSpec("CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW",
                "amount / mean amount of the card's OTHER transactions in (t-30d, t]; -1 when "
                "there are none", ("handbook", "gateway"), "card"),
    FeatureSpec("CUSTOMER_ID_AMOUNT_ZSCORE_30DAY_WINDOW",
                "(amount - mean) / standard deviation of the card's OTHER transactions in "
                "(t-30d, t]; 0 when fewer than two", ("handbook", "gateway"), "card"),
    FeatureSpec("CUSTOMER_ID_SECONDS_SINCE_PREVIOUS_TX",
                "seconds since the card's previous transaction (strictly earlier), at most 30 "
                "days", ("handbook", "gateway"), "card"),
    FeatureSpec("TERMINAL_ID_NB_FRAUD_7DAY_WINDOW",
                "the terminal's transactions in (t-14d, t-7d] labelled fraud",
                ("handbook", "gateway"), "terminal"),
    FeatureSpec("TERMINAL_ID_NB_FRAUD_30DAY_WINDOW",
                "the terminal's transactions in (t-37d, t-7d] labelled fraud",
                ("handbook", "gateway"), "terminal"),
    FeatureSpec("TERMINAL_ID_DAYS_SINCE_KNOWN_FRAUD",
                "days from t-7d back to the terminal's latest transaction at or before t-7d "
                "labelled fraud; 31 when none in the window", ("handbook", "gateway"), "terminal"),
    # The gateway features the design names. They need data the handbook lacks (a country) or
    # duplicate a handbook feature under the design's name, so the handbook model does not use them.
    FeatureSpec("customer_transaction_velocity_1h", "the card's transactions in (t-1h, t], this "
                "one included", ("gateway",), "card"),
    FeatureSpec("customer_transaction_velocity_24h", "the card's transactions in (t-24h, t], "
                "this one included", ("gateway",), "card"),
    FeatureSpec("time_since_last_transaction_min", "minutes since the card's previous "
                "transaction (strictly earlier), at most 30 days", ("gateway",), "card"),
    FeatureSpec("avg_transaction_amount_30d", "mean amount of the card's transactions in "
                "(t-30d, t], this one included", ("gateway",), "card"),
    FeatureSpec("cross_border_transaction_flag", "1 if the transaction's country differs from the "
                "card's home country (the country of its earliest transaction seen)",
                ("gateway",), "card"),
)

_BY_NAME = {f.name: f for f in FEATURES}
assert len(_BY_NAME) == len(FEATURES), "duplicate feature name"


def feature_names(source: str) -> list[str]:
    """The model's input columns for data from ``source``, in their fixed order."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    return [f.name for f in FEATURES if source in f.sources]


# -- transaction -------------------------------------------------------------------------------


def transaction_features(t_ms: int, amount: float) -> dict[str, float]:
    """Features of the transaction alone. Timestamps are UTC epoch milliseconds."""
    day = t_ms // DAY_MS
    hour = (t_ms // HOUR_MS) % 24
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    return {
        "TX_AMOUNT": float(amount),
        "TX_DURING_WEEKEND": 1.0 if weekday >= 5 else 0.0,
        "TX_DURING_NIGHT": 1.0 if hour <= 6 else 0.0,
        "TX_AMOUNT_OVER_220": 1.0 if amount > AMOUNT_THRESHOLD else 0.0,
    }


# -- card --------------------------------------------------------------------------------------


def _time(entry: list[Any]) -> int:
    return int(entry[0])


def card_observe(state: dict[str, Any] | None, tx_id: str, t_ms: int, amount: float,
                 country: str | None = None) -> dict[str, Any]:
    """Add a transaction to the card's state (once) and prune what no window can reach.

    ``state["tx"]`` is ``[[t_ms, tx_id, amount], ...]`` sorted by (time, id). ``country``, when
    the gateway sends one, makes the earliest transaction's country the card's home country (kept
    past pruning). The argument is updated in place and returned.
    """
    if state is None:
        state = {"tx": []}
    entries: list[list[Any]] = state["tx"]
    t_ms = int(t_ms)
    if country is not None:
        home = state.get("home")
        if home is None or [t_ms, tx_id] < home[:2]:
            state["home"] = [t_ms, tx_id, country]
    newest = max(t_ms, entries[-1][0]) if entries else t_ms
    cutoff = newest - CARD_HORIZON_MS
    if t_ms <= cutoff:
        return state  # too late for any window: the same as if it had been pruned
    key = [t_ms, tx_id]
    i = bisect.bisect_left(entries, key)
    if i < len(entries) and entries[i][0] == t_ms and entries[i][1] == tx_id:
        return state
    entries.insert(i, [t_ms, tx_id, float(amount)])
    drop = 0
    while entries[drop][0] <= cutoff:
        drop += 1
    drop = max(drop, len(entries) - MAX_CARD_ENTRIES)
    if drop:
        del entries[:drop]
    return state


def card_features(state: dict[str, Any], t_ms: int) -> dict[str, float]:
    """The card's window features at t: entries with time in (t - n days, t].

    The current transaction is included because it was observed first. Entries later than t
    (seen out of order) are ignored, which is what makes the values independent of arrival order.
    """
    entries: list[list[Any]] = state["tx"]
    t_ms = int(t_ms)
    end = bisect.bisect_right(entries, t_ms, key=_time)
    lo1, lo7, lo30 = t_ms - DAY_MS, t_ms - 7 * DAY_MS, t_ms - 30 * DAY_MS
    lo_1h, lo_24h = t_ms - HOUR_MS, t_ms - DAY_MS
    n1 = n7 = n30 = n_1h = 0
    s1 = s7 = s30 = sq30 = 0.0
    previous = None
    i = end - 1
    while i >= 0:
        ts, _, amount = entries[i]
        if ts <= lo30:
            break
        if previous is None and ts < t_ms:
            previous = ts
        n30 += 1
        s30 += amount
        sq30 += amount * amount
        if ts > lo7:
            n7 += 1
            s7 += amount
            if ts > lo1:
                n1 += 1
                s1 += amount
                if ts > lo_1h:
                    n_1h += 1
        i -= 1
    since_ms = t_ms - previous if previous is not None else NO_PREVIOUS_S * SECOND_MS
    avg30 = s30 / n30 if n30 else 0.0
    return {
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": float(n1),
        "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": s1 / n1 if n1 else 0.0,
        "CUSTOMER_ID_NB_TX_7DAY_WINDOW": float(n7),
        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": s7 / n7 if n7 else 0.0,
        "CUSTOMER_ID_NB_TX_30DAY_WINDOW": float(n30),
        "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": avg30,
        "CUSTOMER_ID_SECONDS_SINCE_PREVIOUS_TX": since_ms / SECOND_MS,
        "customer_transaction_velocity_1h": float(n_1h),
        "customer_transaction_velocity_24h": float(n1),
        "time_since_last_transaction_min": since_ms / MINUTE_MS,
        "avg_transaction_amount_30d": avg30,
        # Not model inputs: what card_amount_features needs to leave the current amount out.
        "_SUM_SQUARES_30DAY": sq30,
    }


def _ratio(amount: float, count: float, mean: float) -> float:
    """amount / mean of the OTHER transactions, given the count and mean including this one."""
    if count <= 1:
        return NO_HISTORY_RATIO
    others = (mean * count - amount) / (count - 1)
    return amount / others if others > 0 else NO_HISTORY_RATIO


def card_amount_features(card: Mapping[str, float], amount: float) -> dict[str, float]:
    """How unusual this amount is for the card, judged against its other recent transactions."""
    n30 = card["CUSTOMER_ID_NB_TX_30DAY_WINDOW"]
    avg30 = card["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"]
    z = 0.0
    if n30 >= 3:
        others = n30 - 1
        mean = (avg30 * n30 - amount) / others
        var = (card["_SUM_SQUARES_30DAY"] - amount * amount) / others - mean * mean
        if var > 1e-9:
            z = (amount - mean) / math.sqrt(var)
    return {
        "CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW": _ratio(
            amount, card["CUSTOMER_ID_NB_TX_7DAY_WINDOW"],
            card["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"]),
        "CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW": _ratio(amount, n30, avg30),
        "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY_WINDOW": z,
    }


def cross_border(state: dict[str, Any], country: str | None) -> float:
    """1 when the transaction's country is known and differs from the card's home country."""
    home = state.get("home")
    if country is None or home is None:
        return 0.0
    return 1.0 if home[2] != country else 0.0


# -- terminal ----------------------------------------------------------------------------------


def _terminal_add(state: dict[str, Any] | None, tx_id: str, t_ms: int,
                  flag: int) -> dict[str, Any]:
    if state is None:
        state = {"newest": int(t_ms), "oldest": int(t_ms), "e": {}}
    t_ms = int(t_ms)
    entries: dict[str, list[int]] = state["e"]
    newest = max(state["newest"], t_ms)
    cutoff = newest - TERMINAL_HORIZON_MS
    state["newest"] = newest
    if t_ms > cutoff:
        entry = entries.get(tx_id)
        if entry is None:
            entries[tx_id] = [t_ms, flag]
            if t_ms < state["oldest"] or len(entries) == 1:
                state["oldest"] = t_ms
        else:
            entry[1] |= flag
    if entries and (state["oldest"] <= cutoff or len(entries) > MAX_TERMINAL_ENTRIES):
        kept = sorted(((e[0], k) for k, e in entries.items() if e[0] > cutoff))
        kept = kept[-MAX_TERMINAL_ENTRIES:]
        state["e"] = {k: entries[k] for _, k in kept}
        state["oldest"] = kept[0][0] if kept else newest
    return state


def terminal_observe_tx(state: dict[str, Any] | None, tx_id: str, t_ms: int) -> dict[str, Any]:
    """Record a transaction at the terminal (once). Updated in place and returned.

    ``state["e"]`` maps transaction id to ``[t_ms, flags]``: keyed by id so a repeat is a no-op,
    and so the transaction and its label (which may arrive first) meet in one entry.
    """
    return _terminal_add(state, tx_id, t_ms, _SEEN)


def terminal_observe_label(state: dict[str, Any] | None, tx_id: str, t_ms: int,
                           is_fraud: bool) -> dict[str, Any]:
    """Record a label for the terminal's transaction ``tx_id`` made at ``t_ms``.

    Order-independent: the label may come before or after the transaction. If one transaction is
    labelled both ways, fraud wins (flags only accumulate, so the result does not depend on which
    label came last).
    """
    return _terminal_add(state, tx_id, t_ms, _FRAUD if is_fraud else _GENUINE)


def terminal_features(state: dict[str, Any], t_ms: int) -> dict[str, float]:
    """Count and fraud share over (t-7d-n, t-7d] for n = 1, 7, 30 days, as the handbook defines.

    A transaction counts if it was seen or labelled; a fraud counts if labelled fraud. Only
    transactions at least a week old are looked at, so in a live stream their labels are known.
    """
    end = int(t_ms) - LABEL_DELAY_MS
    counts = [0, 0, 0]
    frauds = [0, 0, 0]
    latest_fraud = None
    d1, d7, d30 = DAY_MS, 7 * DAY_MS, 30 * DAY_MS
    for ts, flags in state["e"].values():
        age = end - ts
        if age < 0 or age >= d30:
            continue
        fraud = flags & _FRAUD
        counts[2] += 1
        if fraud:
            frauds[2] += 1
            if latest_fraud is None or ts > latest_fraud:
                latest_fraud = ts
        if age < d7:
            counts[1] += 1
            if fraud:
                frauds[1] += 1
            if age < d1:
                counts[0] += 1
                if fraud:
                    frauds[0] += 1
    out: dict[str, float] = {}
    for i, n in enumerate(WINDOW_DAYS):
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = float(counts[i])
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = frauds[i] / counts[i] if counts[i] else 0.0
    out["TERMINAL_ID_NB_FRAUD_7DAY_WINDOW"] = float(frauds[1])
    out["TERMINAL_ID_NB_FRAUD_30DAY_WINDOW"] = float(frauds[2])
    out["TERMINAL_ID_DAYS_SINCE_KNOWN_FRAUD"] = (
        (end - latest_fraud) / DAY_MS if latest_fraud is not None else 31.0)
    return out


# -- a whole row -------------------------------------------------------------------------------


def row_features(card_state: dict[str, Any], terminal_state: dict[str, Any], t_ms: int,
                 amount: float, country: str | None = None) -> dict[str, float]:
    """Every feature of one transaction, read after it was observed in both states.

    The model picks its columns by name (``feature_names``); the gateway columns that need a
    country are 0 when it is not given.
    """
    card = card_features(card_state, t_ms)
    row = transaction_features(t_ms, amount)
    row.update(card)
    row.update(card_amount_features(card, amount))
    row.update(terminal_features(terminal_state, t_ms))
    row["cross_border_transaction_flag"] = cross_border(card_state, country)
    del row["_SUM_SQUARES_30DAY"]
    return row


def build_offline(raw: pd.DataFrame) -> pd.DataFrame:
    """The handbook raw layout in, one row per transaction with every handbook feature out.

    Replays the transactions in event-time order through the same state functions the worker
    uses, with each label applied when it becomes known (``LABEL_DELAY_MS`` after its
    transaction), rather than re-implementing the windows with vectorised pandas: parity with
    the live path is the point. Output rows follow the input's row order; the input's columns
    are kept (labels included, for training; they are never in ``feature_names``).
    """
    import numpy as np
    import pandas as pd

    n = len(raw)
    t_ms_arr = raw["TX_DATETIME"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    ids_arr = raw["TRANSACTION_ID"].to_numpy()
    order = np.lexsort((ids_arr, t_ms_arr))
    times = t_ms_arr[order].tolist()
    ids = [str(i) for i in ids_arr[order].tolist()]
    cards = raw["CUSTOMER_ID"].to_numpy()[order].tolist()
    terminals = raw["TERMINAL_ID"].to_numpy()[order].tolist()
    amounts = raw["TX_AMOUNT"].to_numpy(dtype=np.float64)[order].tolist()
    frauds = raw["TX_FRAUD"].to_numpy()[order].tolist()
    names = feature_names("handbook")
    values = np.empty((n, len(names)), dtype=np.float64)
    card_states: dict[Any, dict[str, Any]] = {}
    terminal_states: dict[Any, dict[str, Any]] = {}
    next_label = 0  # labels become known in the same order as their transactions
    for row in range(n):
        t = times[row]
        while next_label < row and times[next_label] + LABEL_DELAY_MS <= t:
            term = terminals[next_label]
            terminal_states[term] = terminal_observe_label(
                terminal_states.get(term), ids[next_label], times[next_label],
                bool(frauds[next_label]))
            next_label += 1
        card = card_observe(card_states.get(cards[row]), ids[row], t, amounts[row])
        card_states[cards[row]] = card
        terminal = terminal_observe_tx(terminal_states.get(terminals[row]), ids[row], t)
        terminal_states[terminals[row]] = terminal
        feats = row_features(card, terminal, t, amounts[row])
        values[row] = [feats[name] for name in names]
    out = raw.iloc[order].copy()
    for j, name in enumerate(names):
        out[name] = values[:, j]
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return pd.DataFrame(out.iloc[inverse].reset_index(drop=True))
