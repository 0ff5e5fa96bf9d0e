"""The durable store: what people look up after it has left the API's memory.

Verdicts, cases and disputes, written by the API's store feed from the topics (the source of
truth) with the topic positions they came from, and read by the API's lookups. SQLite is the
embedded default; PostgreSQL is reached through a URL. Plain SQL over DB-API connections: this
room knows no Kafka, only (topic, partition, offset) as numbers to resume from.
"""

from streams.store.backends import Backend, open_backend
from streams.store.sql import Store, StoreUnavailable, open_store

__all__ = ["Backend", "Store", "StoreUnavailable", "open_backend", "open_store"]
