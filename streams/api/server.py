"""`rakshit api`: the analysts' and SREs' HTTP API and live page, fed from Kafka.

The topics are the source of truth. A consumer thread reads the topics people look at into the
read model (streams.api.readmodel), a window before the end; a second one writes verdicts, cases
and disputes into the durable store (streams.api.store_feed) from where the store left off; and
commands go back through Kafka to the worker's case agent, the only writer of case state.
Restarting the API loses nothing: the read model reads the compacted cases and policies from the
start and the recent verdicts, outcomes and audit again, and the store resumes from the positions
it committed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.codec import make_codec
from streams.admin import end_offsets
from streams.api.lookup import Lookups
from streams.api.readmodel import ReadModel
from streams.api.routes import Auth, TokenStore, create_api
from streams.api.store_feed import StoreFeed
from streams.config import Settings
from streams.store import open_store
from streams.topics import SPECS, Topic, topic_name

log = logging.getLogger(__name__)

# What the read model is fed, and how far back: None reads the whole topic (compacted state and
# small logs), a number reads that many records per partition before the end.
FEEDS: dict[Topic, int | None] = {
    Topic.CASES: None,
    Topic.ROUTING_POLICY: None,
    Topic.HYPOTHESES: None,
    Topic.EXPERIMENTS: 5_000,
    Topic.AUDIT: 2_000,
    Topic.DECISIONS: 2_000,
    Topic.AUTH_OUTCOMES: 5_000,
    Topic.CASE_COMMANDS: 500,
    Topic.MODEL_QUALITY: None,
}


def tokens_path(settings: Settings) -> Path:
    """The token store: hashed tokens only (its pepper beside it, in api-tokens.json.pepper)."""
    return settings.home / "api-tokens.json"


# Who a token issued for a role alone belongs to (the demo's and the tests' people).
ROLE_USERS = {"viewer": "vera-viewer", "analyst": "ana-analyst", "admin": "ada-admin"}
SHORT_TTL = timedelta(days=1)


def token_store(settings: Settings, path: Path | None = None) -> TokenStore:
    return TokenStore(path or tokens_path(settings))


def issue_token(settings: Settings, role: str, user: str | None = None,
                ttl: timedelta = SHORT_TTL, path: Path | None = None) -> str:
    """A fresh token for ``role`` (for ``user``, else the role's person in ROLE_USERS), valid for
    ``ttl``: the one helper tests and the demo use. Only its hash is stored; a running API
    accepts it at once (it reads the store again when the file changes)."""
    return token_store(settings, path).issue(user or ROLE_USERS[role], role, ttl)


class KafkaSink:
    """Commands and refusal audits onto their topics; a command is acknowledged by the broker
    before the API answers 202, so an accepted request is never lost."""

    def __init__(self, settings: Settings) -> None:
        self.codec = make_codec(settings.schema_registry_url)
        self.producer = Producer({**settings.kafka_config(),
                                  "enable.idempotence": True, "linger.ms": 0})
        self.commands = topic_name(Topic.CASE_COMMANDS, settings.topic_prefix)
        self.audits = topic_name(Topic.AUDIT, settings.topic_prefix)

    async def _send(self, topic: str, schema: str, key: str, record: Mapping[str, Any]) -> None:
        value = self.codec.encode(schema, record, topic=topic)
        self.producer.produce(topic, key=key.encode(), value=value)
        left = await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, 10.0)
        if left:
            raise RuntimeError(f"{left} record(s) to {topic} not acknowledged")

    async def command(self, record: dict[str, Any]) -> None:
        key = record.get("case_id") or record.get("card_token") or "command"
        await self._send(self.commands, "case_command", str(key), record)

    async def audit(self, record: dict[str, Any]) -> None:
        await self._send(self.audits, "audit", str(record.get("actor") or "anonymous"), record)


class KafkaFeed(threading.Thread):
    """Reads the FEEDS topics into the read model, from their start or a window before the end."""

    def __init__(self, settings: Settings, model: ReadModel,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="read-model-feed", daemon=True)
        self.settings, self.model, self.loop = settings, model, loop
        self.codec = make_codec(settings.schema_registry_url)
        self.stop = threading.Event()
        self.schemas = {topic_name(t, settings.topic_prefix): SPECS[t].schema for t in FEEDS}

    def _assignment(self) -> list[TopicPartition]:
        parts = []
        for topic, window in FEEDS.items():
            name = topic_name(topic, self.settings.topic_prefix)
            for p, end in end_offsets(self.settings, name).items():
                start = 0 if window is None else max(0, end - window)
                parts.append(TopicPartition(name, p, start))
        return parts

    def run(self) -> None:
        consumer = Consumer({**self.settings.kafka_config(),
                             "group.id": f"rakshit-api-{secrets.token_hex(4)}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             # A dashboard a tenth of a second behind is live; a fetch per
                             # verdict at 1,000 tx/s cost the broker more than the worker did.
                             "fetch.wait.max.ms": 100, "fetch.min.bytes": 64 * 1024})
        consumer.assign(self._assignment())
        try:
            while not self.stop.is_set():
                batch: list[tuple[str, dict[str, Any]]] = []
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    if msg.error() or msg.value() is None:
                        continue
                    topic = msg.topic() or ""
                    schema = self.schemas[topic]
                    try:
                        record = self.codec.decode(msg.value() or b"", topic=topic,
                                                   expect=schema).record
                    except Exception:  # the worker dead-letters bad input; here: skip, say so
                        log.warning("undecodable record on %s at offset %d", topic,
                                    msg.offset())
                        continue
                    batch.append((schema, record))
                if batch:  # one wake-up of the API's loop per batch, not per record
                    self.model.apply_threadsafe(self.loop, batch)
        finally:
            consumer.close()


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts, so a port another process
    holds ends `rakshit api` at once with one line (streams.launcher.StartupFailed)."""
    from streams.launcher import StartupFailed

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        # As aiohttp does: a port left in TIME_WAIT is reusable, one listened on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--port "
                            "picks another)") from exc
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, host: str, port: int, auth: Auth,
                ready: threading.Event | None = None, sock: socket.socket | None = None) -> None:
    from scoring.drift import Baseline
    from scoring.lifecycle import describe
    from scoring.registry import drift_baselines
    from streams.worker.chain import registry_for

    def models() -> list[dict[str, Any]]:
        try:
            return describe(registry_for(settings))
        except Exception:  # no registry yet: the page says so rather than failing
            return []

    registry = registry_for(settings)
    cache: dict[str, dict[str, Baseline] | None] = {}

    def baselines(version: str) -> dict[str, Baseline] | None:
        """The model's training distributions, per feature and for the score (cached)."""
        if version not in cache:
            try:
                cache[version] = drift_baselines(registry.meta(version))
            except Exception:  # rules-only verdicts, or a model this registry does not hold
                cache[version] = None
        return cache[version]

    loop = asyncio.get_running_loop()
    model = ReadModel(models=models, baselines=baselines)
    feed = KafkaFeed(settings, model, loop)
    feed.start()
    store = open_store(settings.store_url)
    store_feed = StoreFeed(settings, store)
    store_feed.start()
    log.info("durable store: %s at %s", store.name, store.where)
    lookups = Lookups(model, store, store_feed)
    runner = web.AppRunner(create_api(model, KafkaSink(settings), auth, lookups=lookups))
    await runner.setup()
    site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    await site.start()
    log.info("API and dashboard on http://%s:%d/", host, port)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        feed.stop.set()
        store_feed.stop.set()
        await runner.cleanup()
        store_feed.join(timeout=5)
        store.close()


def run_api(settings: Settings, host: str, port: int, tokens: Path | None,
            sock: socket.socket | None = None) -> None:
    auth = Auth(token_store(settings, tokens))
    print(f"API and dashboard: http://{host}:{port}/  (tokens: "
          f"{tokens or tokens_path(settings)})", flush=True)
    asyncio.run(serve(settings, host, port, auth, sock=sock))
