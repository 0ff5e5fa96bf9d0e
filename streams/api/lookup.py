"""Where the API answers what people look up later, and whether it may take commands now.

Lookups ask the durable store first (streams.store): it holds every verdict the decision topic
retains, every case and every dispute, long after they left the read model's recent window. The
read model is the cache: it answers when the store is down, and adds what the store feed has not
written yet (the two follow the topics independently). Every answer says where it came from.

Commands are refused while the store cannot be written (the read-only mode): what an analyst or
a customer does must be findable later, and the store is where people look. Nothing is lost by
refusing: the caller is told to retry, and the store catches up from the topics on its own.

Store calls run in a worker thread, so a slow database never stalls the event loop that also
serves the dashboard.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from streams.api.readmodel import ReadModel, case_row, jsonable
from streams.api.store_feed import StoreFeed
from streams.store import Store, StoreUnavailable

__all__ = ["Lookups", "Source"]

Record = dict[str, Any]
Source = Literal["store", "cache"]


class Lookups:
    """The store with the read model as its cache; without a store, the read model alone."""

    def __init__(self, model: ReadModel, store: Store | None = None,
                 feed: StoreFeed | None = None) -> None:
        self.model, self.store, self.feed = model, store, feed

    async def verdicts(self, transaction_id: str) -> tuple[list[Record], Source]:
        """Every verdict on a payment, newest first (the first is the decision that stands),
        and the source of that first one."""
        cached = self.model.verdicts_of(transaction_id)
        if self.store is None:
            return cached, "cache"
        try:
            stored = await asyncio.to_thread(self.store.verdicts, transaction_id)
        except StoreUnavailable:
            return cached, "cache"
        # A payment's verdicts share a partition and the store writes it in order, so a verdict
        # the cache has and the store lacks is newer than every stored one.
        known = {v.get("verdict_id") for v in stored}
        newer = [v for v in cached if v.get("verdict_id") not in known]
        return newer + stored, "cache" if newer else "store"

    async def case(self, case_id: str, now: datetime) -> tuple[Record | None, Source]:
        """A case with its verdict: the read model's live view (with the customer's recent
        verdicts and the case's audit) while it holds the case, else the store's."""
        live = self.model.case(case_id, now)
        if live is not None or self.store is None:
            return live, "cache"
        try:
            rec = await asyncio.to_thread(self.store.case, case_id)
            verdict = None if rec is None else await asyncio.to_thread(
                self.store.verdict, str(rec.get("verdict_id")))
        except StoreUnavailable:
            return None, "cache"
        if rec is None:
            return None, "store"
        out = jsonable({"case": case_row(rec, now, None), "verdict": verdict,
                        "customer_history": [], "audit": []})
        assert isinstance(out, dict)
        return out, "store"

    async def disputes(self, transaction_id: str | None,
                       limit: int) -> tuple[list[Record], Source]:
        """Disputes filed, newest first, each with its payment's case (None until opened)."""
        if self.store is not None:
            try:
                return await asyncio.to_thread(self.store.disputes, transaction_id,
                                               limit), "store"
            except StoreUnavailable:
                pass
        rows = self.model.disputes(transaction_id, limit)
        for row in rows:
            cases = self.model.cases_of(str(row["transaction_id"]))
            row["case"] = cases[0] if cases else None
        return rows, "cache"

    async def refusal(self) -> str | None:
        """Why commands are refused now (the read-only mode), or None if they are accepted."""
        if self.store is None:
            return None
        failing = None if self.feed is None else self.feed.error
        if failing is not None:
            return failing
        try:
            await asyncio.to_thread(self.store.ping)
        except StoreUnavailable as exc:
            return str(exc)
        return None

    async def status(self) -> Record:
        """For SREs: which store, whether commands are accepted, and how far behind it is."""
        if self.store is None:
            return {"backend": None, "writable": True, "reason": None}
        reason = await self.refusal()
        out: Record = {"backend": self.store.name, "where": self.store.where,
                       "writable": reason is None, "reason": reason}
        if self.feed is not None:
            out.update(await asyncio.to_thread(self.feed.status))
        return out
