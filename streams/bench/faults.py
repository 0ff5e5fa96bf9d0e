"""`rakshit bench faults`: faults during steady traffic, and what a downstream reader sees.

Each fault gets a run of its own (its own topic prefix and app id, so every count is that fault's):
a worker (streams.launcher.start_worker) on the broker the settings name, steady traffic from one
thread at ``--rate`` transactions per second (the pipeline benchmark's handbook transactions,
decided by the registry's champion), ``WARMUP_S`` of it, the fault (streams.bench.faults_inject),
traffic for ``--after`` seconds past the fault's end, then the backlog drained (bounded) and the
decision topic read whole with read_committed. Per fault:

- transactions: sent and acknowledged by the broker;
- lost: acknowledged transactions without a verdict (db-stop: plus verdicts on the topic that
  the API's store does not hold once it has caught up);
- duplicates: verdicts beyond the first for a transaction, and whether each is byte for byte its
  first (a restarted worker reads back and re-sends what it published, streams.worker.lane);
- recovery_s: seconds from the fault's end until verdict latency is back under its target,
  defined in streams.bench.faults_traffic; db-stop, whose database the verdicts do not pass
  through: until the API's store is writable and at most one second of traffic behind the
  topics again (the verdicts' own figure is latency_recovery_s, as for every fault). Beside it,
  median_recovery_s: from the fault's end until ten seconds in a row each have a median latency
  under the target, i.e. the fault's backlog is gone (on a loaded machine the p99 may stay over
  the target with no fault at all: baseline_p99_ms is the p99 before the fault, and a note says
  when it already missed the target).

The faults' ends are when the component serves again (streams.bench.faults_inject); fault_s is
the time from injection to then. The API faults also count an analyst's commands (whitelistings,
applied by the worker's case agent): sent, accepted (202), refused, and accepted but never
applied (``commands_lost``). The broker faults kill or freeze the broker RAKSHIT_BROKER_PORT
names: run the bench on a port of its own.

Targets (issue 13): 0 lost, duplicates identical, recovery within 30 s of the fault's end (and no
accepted command lost). A missed target is a FAIL line and the exit code stays 0, as in
`rakshit bench healing`: the figures are the output.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from infra.kafka.launcher import BrokerError
from infra.postgres import PostgresMissing, PostgresServer
from schemas.codec import make_codec
from streams.admin import delete_run_topics, end_offsets, ensure_topics, free_port
from streams.api.server import issue_token
from streams.bench.faults_inject import (
    API_FAULTS,
    BACK_WITHIN_S,
    FAULTS,
    Commands,
    Stage,
    store_caught_up,
    store_url,
    stored_verdict_ids,
)
from streams.bench.faults_traffic import (
    SteadyTraffic,
    Tally,
    backlog_gone_s,
    p99,
    p99_by_second,
    read_decisions,
    read_to_end,
    recovery_s,
    since_end,
)
from streams.bench.pipeline import RunFailed, benchmark_records
from streams.broker import embedded_broker, ensure_broker
from streams.config import Settings
from streams.demo.run import VerdictCollector
from streams.launcher import ChildExited, check_alive, stop_process
from streams.topics import Topic, topic_name

WARMUP_S = 10.0
TARGET_MS = 100.0
TARGET_RECOVERY_S = 30.0
REQUIRED = ("name", "transactions", "lost", "duplicates", "duplicates_identical", "recovery_s")


@dataclass(frozen=True)
class FaultOptions:
    rate: float = 200.0
    after_s: float = 40.0  # traffic kept up after the fault's end
    warmup_s: float = WARMUP_S
    drain_s: float = 120.0  # at most this long for the backlog after the traffic stops
    latency_target_ms: float = TARGET_MS
    seed: int = 5


def fault_names(only: str | None) -> list[str]:
    if not only:
        return list(FAULTS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(FAULTS)}")
    return names


def bench_faults(settings: Settings, only: str | None = None,
                 options: FaultOptions = FaultOptions(),
                 summary_json: Path | None = None) -> list[dict[str, Any]]:
    """Run the chosen faults one after the other; one row each (an ``error`` key when the run
    itself failed). The summary JSON is rewritten after each fault."""
    names = fault_names(only)
    started_broker = ensure_broker(settings)
    stamp = time.strftime("%H%M%S")
    rows: list[dict[str, Any]] = []
    print(f"faults: {', '.join(names)} at {options.rate:g} tx/s, latency target "
          f"{options.latency_target_ms:g} ms; broker {settings.bootstrap_servers}", flush=True)
    try:
        for i, name in enumerate(names, 1):  # a fault named twice runs twice, apart
            began = time.monotonic()
            try:
                row = run_fault(settings, name, options, f"faults{stamp}-{i}-{name}")
            except (ChildExited, RunFailed, RuntimeError, BrokerError, KafkaException) as exc:
                row = {"name": name, "transactions": None, "lost": None, "duplicates": None,
                       "duplicates_identical": None, "recovery_s": None, "error": str(exc)}
            row["wall_s"] = round(time.monotonic() - began, 1)
            row["passed"] = passed(row)
            rows.append(row)
            print(f"{name}: {format_row(row)}", flush=True)
            if summary_json:
                write_summary(summary_json, rows)
    finally:
        if started_broker:
            embedded_broker(settings).stop()
    return rows


def run_fault(base: Settings, name: str, options: FaultOptions, tag: str) -> dict[str, Any]:
    settings = replace(base, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}")
    run_dir = settings.home / "bench-faults" / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = Stage(settings, tag)
    traffic: SteadyTraffic | None = None
    collector: VerdictCollector | None = None
    commands: Commands | None = None
    try:
        if name == "db-stop":
            try:
                stage.pg = PostgresServer()
            except PostgresMissing as exc:
                raise RunFailed(str(exc)) from exc
            stage.pg.start()
        if name in API_FAULTS:
            settings = stage.settings = replace(settings, database_url=store_url(stage, run_dir))
            stage.api_port = free_port()
        ensure_topics(settings)
        records = _records(settings, options)
        stage.start_worker()
        print(f"{name}: worker ready ({stage.worker_log})", flush=True)
        if name in API_FAULTS:
            stage.tokens = {role: issue_token(settings, role) for role in ("viewer", "analyst")}
            stage.start_api()
            _wait(lambda: store_caught_up(stage, 0), 60.0, "the API's store did not start "
                  "writing", stage)
        decisions = topic_name(Topic.DECISIONS, settings.topic_prefix)
        collector = VerdictCollector(settings, dict.fromkeys(end_offsets(settings, decisions), 0))
        collector.start()
        collector.ready.wait(10)
        traffic = SteadyTraffic(settings, records, options.rate, collector.on_transaction)
        traffic.start()
        if name in API_FAULTS:
            commands = Commands(stage)
            commands.start()
        _hold(stage, time.time() + options.warmup_s)
        print(f"{name}: {options.warmup_s:g}s of traffic; injecting", flush=True)
        fault_start, fault_end = FAULTS[name](stage)
        print(f"{name}: back in service after {fault_end - fault_start:.1f}s; "
              f"{options.after_s:g}s more traffic", flush=True)
        store_back: float | None = None
        deadline = fault_end + options.after_s
        while time.time() < deadline:
            check_alive(*stage.processes())
            if name == "db-stop" and store_back is None \
                    and store_caught_up(stage, int(options.rate)):
                store_back = time.time() - fault_end
            time.sleep(0.5)
        if commands is not None:
            commands.stop_event.set()
            commands.join(10)
        traffic.stop_event.set()
        traffic.join(150)
        acked = set(traffic.acked)
        _wait(lambda: all(t in collector.first_seen for t in acked), options.drain_s,
              f"verdicts still missing {options.drain_s:.0f}s after the traffic stopped", stage,
              fail=False)
        collector.stop_event.set()
        collector.join(5)
        tally = read_decisions(settings)
        row = _figures(name, tally, traffic, collector, fault_start, fault_end, options)
        row["differences"] = tally.how_they_differ(settings)
        (run_dir / "latency.json").write_text(json.dumps({
            "fault_start": fault_start, "fault_end": fault_end, "sent_at": traffic.sent_at,
            "first_seen": collector.first_seen}))
        if commands is not None:
            row.update(_command_counts(settings, commands))
        if name == "db-stop":
            _wait(lambda: store_caught_up(stage, 0), options.drain_s,
                  "the API's store did not catch up", stage, fail=False)
            missing = len(tally.verdict_ids - stored_verdict_ids(settings.store_url))
            row["store_missing"] = missing
            row["lost"] += missing
            row["store_recovery_s"] = None if store_back is None else round(store_back, 1)
            row["recovery_s"] = row["store_recovery_s"]
        return row
    finally:
        for thread in (commands, traffic, collector):
            if thread is not None:
                thread.stop_event.set()
        for proc in (stage.api, stage.worker):
            if proc is not None:
                stop_process(proc)
        if stage.pg is not None:
            stage.pg.destroy()
        try:
            delete_run_topics(settings)
        except Exception as exc:  # the broker may be what failed; say so, keep the row
            print(f"{name}: could not delete the run's topics: {exc}", flush=True)


def _figures(name: str, tally: Tally, traffic: SteadyTraffic, collector: VerdictCollector,
             fault_start: float, fault_end: float, options: FaultOptions) -> dict[str, Any]:
    """The row of one fault: counts from the decision topic, latencies from the live reader."""
    acked = set(traffic.acked)
    samples = since_end({t: traffic.sent_at[t] for t in acked}, collector.first_seen, fault_end)
    latency_back = recovery_s(samples, options.latency_target_ms)
    # Before the fault: the warm-up's second half, verdicts read before the fault began.
    calm = fault_start - options.warmup_s / 2
    warm = [(seen - sent) * 1000.0 for t, sent in traffic.sent_at.items()
            if sent >= calm and (seen := collector.first_seen.get(t, math.inf)) < fault_start]
    return {
        "name": name, "transactions": len(acked), "lost": tally.lost(acked),
        "duplicates": tally.duplicates(), "duplicates_identical": tally.identical(),
        "duplicates_differing": len(tally.differing()),
        "recovery_s": latency_back, "latency_recovery_s": latency_back,
        "median_recovery_s": backlog_gone_s(samples, options.latency_target_ms),
        "fault_s": round(fault_end - fault_start, 1),
        "unacknowledged": len(traffic.sent_at) - len(acked),
        "verdicts": tally.records,
        "baseline_p99_ms": _round(p99(warm)),
        "after_p99_ms": _round(p99([lat for _, lat in samples])),
        "traffic_exhausted": traffic.exhausted,
        # p99 (ms) of each second's transactions from the fault's end (None: one was lost)
        "p99_ms_by_second": [_round(v) for v in p99_by_second(samples)],
    }


def _records(settings: Settings, options: FaultOptions) -> list[tuple[bytes, bytes, str]]:
    """Enough handbook transactions for the whole run at the rate, with their ids: warm-up, the
    slowest fault's time to come back, the time after, and slack."""
    count = int(options.rate * (options.warmup_s + BACK_WITHIN_S + options.after_s))
    codec = make_codec(settings.schema_registry_url)
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    return [(key, value, codec.decode(value, topic=topic, expect="transaction")
             .record["transaction_id"])
            for key, value in benchmark_records(settings, count, options.seed, "handbook")]


def _hold(stage: Stage, until: float) -> None:
    while time.time() < until:
        check_alive(*stage.processes())
        time.sleep(min(0.5, max(0.0, until - time.time())))


def _wait(done: Any, timeout_s: float, failure: str, stage: Stage, fail: bool = True) -> bool:
    """Poll ``done()`` until true; after ``timeout_s`` raise RunFailed (``fail``) or say so."""
    deadline = time.monotonic() + timeout_s
    while not done():
        check_alive(*stage.processes())
        if time.monotonic() > deadline:
            if fail:
                raise RunFailed(f"{failure} within {timeout_s:.0f}s")
            print(f"{stage.tag}: {failure}", flush=True)
            return False
        time.sleep(0.5)
    return True


def _command_counts(settings: Settings, commands: Commands) -> dict[str, Any]:
    """What became of the analyst's commands: the whitelistings on the whitelist topic."""
    applied: dict[str, int] = {}
    for key, _ in read_to_end(settings, topic_name(Topic.WHITELIST, settings.topic_prefix)):
        token = (key or b"").decode()
        applied[token] = applied.get(token, 0) + 1
    return {"commands_sent": commands.sent, "commands_accepted": len(commands.accepted),
            "commands_refused": dict(commands.refused),
            "commands_lost": sum(1 for t in commands.accepted if t not in applied),
            "commands_applied_twice": sum(1 for n in applied.values() if n > 1)}


def _round(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None


def passed(row: dict[str, Any]) -> bool:
    return (not row.get("error") and row["lost"] == 0 and row["duplicates_identical"] is True
            and row["recovery_s"] is not None and row["recovery_s"] <= TARGET_RECOVERY_S
            and not row.get("commands_lost"))


def format_row(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"FAIL: {row['error']}"
    rec = "never" if row["recovery_s"] is None else f"{row['recovery_s']:.1f}s"
    extra = (f"; commands {row['commands_accepted']}/{row['commands_sent']} accepted, "
             f"{row['commands_lost']} lost" if "commands_sent" in row else "")
    return (f"{row['transactions']} transactions, {row['lost']} lost, {row['duplicates']} "
            f"duplicates ({'identical' if row['duplicates_identical'] else 'DIFFERING'}), "
            f"recovery {rec} (fault {row['fault_s']}s, baseline p99 {row['baseline_p99_ms']} "
            f"ms){extra}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    def f(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    head = (f"{'fault':14} {'transactions':>12} {'lost':>6} {'duplicates':>10} {'identical':>9} "
            f"{'recovery_s':>10} {'median_s':>8} {'fault_s':>7}  target")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:14} {f(r['transactions']):>12} {f(r['lost']):>6} "
                     f"{f(r['duplicates']):>10} {f(r['duplicates_identical']):>9} "
                     f"{f(r['recovery_s']):>10} {f(r.get('median_recovery_s')):>8} "
                     f"{f(r.get('fault_s')):>7}  "
                     f"{'pass' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)


def targets_met(rows: Sequence[dict[str, Any]], target_ms: float = TARGET_MS) -> list[str]:
    """Each fault against the targets, then how many met them all."""
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['name']}: FAIL, the run failed: {r['error']}")
            continue
        rec = r["recovery_s"]
        checks = [f"lost {r['lost']} {'==' if r['lost'] == 0 else '!='} 0",
                  f"duplicates {'identical' if r['duplicates_identical'] else 'DIFFER'}",
                  "recovery never" if rec is None else
                  f"recovery {rec:.1f}s {'<=' if rec <= TARGET_RECOVERY_S else '>'} "
                  f"{TARGET_RECOVERY_S:.0f}s"]
        if "commands_lost" in r:
            checks.append(f"accepted commands lost {r['commands_lost']}")
        lines.append(f"{r['name']}: {'pass' if r['passed'] else 'FAIL'} ({'; '.join(checks)})")
        base = r.get("baseline_p99_ms")
        if base is not None and base >= target_ms:
            lines.append(f"  note: p99 before the fault was already {base:.0f} ms, over the "
                         f"{target_ms:.0f} ms target: this machine misses it without a fault")
    met = sum(1 for r in rows if r["passed"])
    lines.append(f"targets met: {met}/{len(rows)} faults")
    return lines


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"faults": [dict(r) for r in rows]}


def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary(rows), indent=2) + "\n")
