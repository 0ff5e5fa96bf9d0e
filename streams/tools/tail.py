"""`rakshit tail`: decoded events as they arrive, for SREs watching a topic at 3 a.m."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from schemas.codec import DecodeError, make_codec
from streams.config import Settings
from streams.topics import TOPICS, TopicSpec, topic_name


def jsonable(value: Any) -> Any:
    """Avro's Python values (Decimal, datetime, bytes) in a form json.dumps accepts losslessly."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def resolve_topic(settings: Settings, name: str) -> tuple[str, TopicSpec | None]:
    """Accept a short name ('decisions') or a full one ('rakshit.decisions')."""
    for spec in TOPICS:
        full = topic_name(spec.topic, settings.topic_prefix)
        if name in (spec.topic.value, full):
            return full, spec
    return name, None


def read(settings: Settings, topic: str, from_beginning: bool = False,
         max_records: int | None = None, idle_timeout_s: float | None = None,
         ) -> Iterator[dict[str, Any]]:
    """Yield decoded records (with their coordinates) as a read_committed consumer sees them."""
    full, spec = resolve_topic(settings, topic)
    codec = make_codec(settings.schema_registry_url)
    consumer = Consumer({
        **settings.kafka_config(),
        "group.id": f"rakshit-tail-{time.time_ns()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        meta = consumer.list_topics(full, timeout=10)
        if full not in meta.topics or meta.topics[full].error is not None:
            raise SystemExit(f"no such topic: {full}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(full, p, start) for p in meta.topics[full].partitions])
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            if msg.error():
                continue
            last = time.monotonic()
            seen += 1
            out: dict[str, Any] = {"topic": msg.topic(), "partition": msg.partition(),
                                   "offset": msg.offset(),
                                   "key": (msg.key() or b"").decode("utf-8", "replace")}
            try:
                decoded = codec.decode(msg.value() or b"", topic=full,
                                       expect=spec.schema if spec else None)
                out["schema"] = decoded.schema
                out["value"] = jsonable(decoded.record)
            except DecodeError as exc:
                out["error"] = f"{exc.reason}: {exc}"
            yield out
    finally:
        consumer.close()


def tail(settings: Settings, topic: str, from_beginning: bool, max_records: int | None,
         as_json: bool, out: TextIO = sys.stdout) -> int:
    count = 0
    for item in read(settings, topic, from_beginning, max_records):
        count += 1
        if as_json:
            out.write(json.dumps(item, sort_keys=True) + "\n")
        else:
            body = item.get("value", item.get("error"))
            out.write(f"{item['topic']}[{item['partition']}]@{item['offset']} "
                      f"key={item['key']} {json.dumps(body, sort_keys=True)}\n")
        out.flush()
    return count
