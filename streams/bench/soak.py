"""`rakshit bench soak`: the whole pipeline at a steady rate for a long time, watched.

What the demo starts (broker, topics, a champion trained on simulator traffic, one worker, the
API with its store feed, the simulator at ``rate`` with its outcomes and labels), run for
``minutes`` while a sample is taken every ``sample_s``: worker and API resident memory (VmRSS of
the process and its descendants) and CPU, consumer lag, what was produced and decided, and the
verdict latency in the window. Then the traffic stops, the verdicts drain, and every acked
transaction is matched with a verdict on the decision topic. Issue 13 asks of it: memory flat
after warm-up (growth under 10%), consumer lag bounded, nothing lost.

Lag is what a restart would read again: the end offset minus the committed position, summed over
partitions. For the worker that is its fraud lane's consumer group (``<app id>-fraud``) on the
transactions and scoring topics (it commits every ``commit_interval_s``, so a healthy worker
shows up to that much traffic). For the API it is the decision topic's end minus the positions
its store feed committed with the verdicts it wrote (the feed keeps its positions in the store,
not in Kafka). Lag in seconds is lag in records over the target rate.

Event time runs at ``speedup`` (8,640: six event days per wall minute, not the demo's 20) so
that the worker's state reaches its horizon within the warm-up: card and terminal windows keep
up to 37 days (plus a day's lateness) of event time, and at 20x a half-hour run would only ever
add to them, which is growth by design, not a leak. At this pace the simulator's labels (3-10
days after their transaction) also arrive within the run, so the online learner and the
evaluator learn. The traffic is the "mixed" scenario (fraud campaigns and an issuer outage from
40% to 60% of the run), so the routing agents have something to do too.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.routing.baseline import write_baseline
from scoring.retention import CARD_RETENTION_MS
from streams.admin import delete_run_topics, end_offsets, ensure_topics, free_port
from streams.bench.cost import process_usage
from streams.broker import embedded_broker, ensure_broker
from streams.config import Settings
from streams.demo.run import DemoOptions, VerdictCollector, ensure_champion, percentiles
from streams.demo.run import demo_customers as customers_for
from streams.launcher import (
    as_service,
    check_alive,
    start_api,
    start_worker,
    stop_process,
    wait_until_ready,
)
from streams.simulator.population import build_population
from streams.topics import Topic, topic_name
from streams.worker.learning import MEMORY

MIB = 2**20
GROWTH_LIMIT_PCT = 10.0
# Lag is bounded when the second half's worst is within LAG_RATIO of the first half's (or within
# LAG_FLOOR_S of traffic: a commit interval's worth must not fail a run), and never above
# LAG_CAP_S of traffic after warm-up.
LAG_RATIO, LAG_FLOOR_S, LAG_CAP_S = 1.5, 5.0, 30.0
LAGS = ("transactions", "scoring", "api_decisions")
TRAIN_SPAN_S = 60.0  # wall seconds of demo-shaped traffic per training run (streams.demo.run)


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    rate: float = 1000.0
    warmup_minutes: float | None = None  # None: ``settle_minutes()``
    sample_s: float = 10.0
    scenario: str = "mixed"
    speedup: float = 8640.0
    seed: int = 13
    label_delay_days: tuple[float, float] = (3.0, 10.0)  # the simulator's: 30-100 wall seconds
    drain_timeout_s: float = 180.0

    def settle_minutes(self) -> float:
        """Wall minutes until the worker's state is at its steady size, plus one for the expiry
        sweep to go round: the scored-transaction memory full (``MEMORY`` at ``rate``) and the
        first cards at their retention (``scoring.retention.CARD_RETENTION_MS`` of event time
        at ``speedup``: 15 minutes at 8,640x). Memory measured before then grows by design."""
        fill = MEMORY / self.rate / 60
        cards = CARD_RETENTION_MS / self.speedup / 60_000
        return round(max(fill, cards) + 1.0, 1)

    def with_warmup(self) -> SoakOptions:
        """These options, the warm-up defaulting to ``settle_minutes()``."""
        if self.warmup_minutes is not None:
            return self
        return replace(self, warmup_minutes=self.settle_minutes())

    def check(self) -> None:
        """ValueError naming the option that is wrong."""
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be above 0, not {self.minutes}")
        if not self.rate > 0:
            raise ValueError(f"--rate must be above 0, not {self.rate}")
        if self.warmup_minutes is None:
            raise ValueError("no warm-up: use with_warmup()")
        if not 0 <= self.warmup_minutes < self.minutes:
            raise ValueError(f"--warmup-minutes must be at least 0 and below --minutes "
                             f"({self.minutes:g}), not {self.warmup_minutes}")


@dataclass
class Sample:
    """One look at the run, ``t_s`` wall seconds after the traffic began."""

    t_s: float
    worker_rss_mib: float
    api_rss_mib: float
    worker_cpu_s: float
    api_cpu_s: float
    produced: int
    verdicts: int
    lag_transactions: int
    lag_scoring: int
    lag_api_decisions: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    traffic: bool  # taken while the simulator was producing


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and every descendant (children found through /proc/*/task/*/children)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone between two reads
    return total


class LagReader:
    """The run's lags in records (see the module's docstring), from one admin client, one
    watermark consumer and the API's store, held for the run."""

    def __init__(self, settings: Settings) -> None:
        from streams.store import open_store

        self.group = f"{settings.app_id}-fraud"
        self.topics = {t: topic_name(t, settings.topic_prefix)
                       for t in (Topic.TRANSACTIONS, Topic.SCORING, Topic.DECISIONS)}
        self.admin = AdminClient(settings.kafka_config())
        self.consumer = Consumer({**settings.kafka_config(), "group.id": "rakshit-offsets",
                                  "enable.auto.commit": False})
        self.partitions = {name: sorted(self.consumer.list_topics(name, timeout=10)
                                        .topics[name].partitions)
                           for name in self.topics.values()}
        self.store = open_store(settings.store_url)

    def _ends(self, name: str) -> dict[int, int]:
        return {p: int(self.consumer.get_watermark_offsets(TopicPartition(name, p),
                                                           timeout=10)[1])
                for p in self.partitions[name]}

    def read(self) -> dict[str, int]:
        request = ConsumerGroupTopicPartitions(self.group)
        answer = self.admin.list_consumer_group_offsets([request])[self.group].result(timeout=15)
        committed = {(tp.topic, tp.partition): max(0, tp.offset)
                     for tp in answer.topic_partitions or []}
        decisions = self.topics[Topic.DECISIONS]
        stored = self.store.positions([decisions])
        out = {}
        for key, topic, positions in (
                ("transactions", self.topics[Topic.TRANSACTIONS], committed),
                ("scoring", self.topics[Topic.SCORING], committed),
                ("api_decisions", decisions, stored)):
            out[key] = sum(max(0, end - positions.get((topic, p), 0))
                           for p, end in self._ends(topic).items())
        return out

    def close(self) -> None:
        self.consumer.close()
        self.store.close()


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def memory_growth(samples: list[Sample], warmup_s: float, window_s: float = 60.0
                  ) -> dict[str, dict[str, float | None]]:
    """Per process: RSS at the end of warm-up (median of the samples in the ``window_s`` after
    it) and at the end (median of the traffic's last ``window_s``), and the growth in %."""
    traffic = [s for s in samples if s.traffic]
    end_t = traffic[-1].t_s if traffic else 0.0
    out: dict[str, dict[str, float | None]] = {}
    for proc in ("worker", "api"):
        def rss(s: Sample, proc: str = proc) -> float:
            return float(getattr(s, f"{proc}_rss_mib"))

        start = _median([rss(s) for s in traffic if warmup_s <= s.t_s < warmup_s + window_s])
        end = _median([rss(s) for s in traffic if s.t_s > end_t - window_s])
        growth = round((end - start) / start * 100, 1) if start and end is not None else None
        out[proc] = {"rss_mib_after_warmup": start, "rss_mib_end": end, "growth_pct": growth}
    return out


def lag_bounded(samples: list[Sample], warmup_s: float, rate: float,
                steady_until_s: float | None = None) -> dict[str, Any]:
    """Per lag: its worst in each half of the traffic after warm-up, its worst overall and
    whether it is bounded (LAG_RATIO, LAG_FLOOR_S, LAG_CAP_S); ``bounded`` is all of them.
    Only steady traffic is judged: a sample after ``steady_until_s`` (the last sampling interval,
    in which the producer stops and flushes what it holds) is reported, not judged."""
    after = [s for s in samples if s.traffic and s.t_s >= warmup_s
             and (steady_until_s is None or s.t_s <= steady_until_s)]
    mid = (after[0].t_s + after[-1].t_s) / 2 if after else 0.0
    out: dict[str, Any] = {}
    for key in LAGS:
        first = [int(getattr(s, f"lag_{key}")) for s in after if s.t_s <= mid]
        second = [int(getattr(s, f"lag_{key}")) for s in after if s.t_s > mid]
        worst = max(first + second, default=0)
        ok = (max(second, default=0) <= max(LAG_RATIO * max(first, default=0), LAG_FLOOR_S * rate)
              and worst <= LAG_CAP_S * rate and bool(after))
        out[key] = {"max_first_half": max(first, default=0),
                    "max_second_half": max(second, default=0), "max": worst,
                    "max_s": round(worst / rate, 2), "bounded": ok}
    out["bounded"] = all(out[key]["bounded"] for key in LAGS)
    return out


def targets(growth: dict[str, dict[str, float | None]], lag: dict[str, Any], lost: int
            ) -> dict[str, bool]:
    grew = [g["growth_pct"] for g in growth.values()]
    return {"memory_growth_under_10pct": all(g is not None and g < GROWTH_LIMIT_PCT
                                             for g in grew),
            "lag_bounded": bool(lag["bounded"]), "lost_zero": lost == 0}


def per_minute(samples: list[Sample], warmup_s: float) -> list[dict[str, Any]]:
    """One row per minute of traffic: rates over the minute, memory at its last sample, the
    worst lag and the median of the windows' latency percentiles in it."""
    rows: list[dict[str, Any]] = []
    before: Sample | None = None
    samples = [s for s in samples if s.traffic]
    minutes = sorted({int(s.t_s // 60) for s in samples})
    for minute in minutes:
        group = [s for s in samples if int(s.t_s // 60) == minute]
        last = group[-1]
        ref_t, ref_p, ref_v = ((before.t_s, before.produced, before.verdicts) if before
                               else (0.0, 0, 0))
        ref_w, ref_a = (before.worker_cpu_s, before.api_cpu_s) if before else (
            group[0].worker_cpu_s, group[0].api_cpu_s)
        span = max(1e-9, last.t_s - ref_t)
        rows.append({
            "minute": minute + 1, "warmup": minute * 60 < warmup_s,
            "produced_tps": round((last.produced - ref_p) / span, 1),
            "verdicts_tps": round((last.verdicts - ref_v) / span, 1),
            "worker_rss_mib": last.worker_rss_mib, "api_rss_mib": last.api_rss_mib,
            "worker_cpu_pct": round((last.worker_cpu_s - ref_w) / span * 100, 1),
            "api_cpu_pct": round((last.api_cpu_s - ref_a) / span * 100, 1),
            **{f"max_lag_{k}": max(int(getattr(s, f"lag_{k}")) for s in group) for k in LAGS},
            "latency_p50_ms": _median([s.latency_p50_ms for s in group
                                       if s.latency_p50_ms is not None]),
            "latency_p99_ms": _median([s.latency_p99_ms for s in group
                                       if s.latency_p99_ms is not None]),
        })
        before = last
    return rows


def run_soak(settings: Settings, options: SoakOptions) -> dict[str, Any]:
    """Start everything, drive the traffic, sample, drain, count; the summary (also printed)."""
    from streams.simulator.producer import (
        DeliveryFailed,
        SimulationOptions,
        SimulationReport,
        run_simulation,
    )

    options = options.with_warmup()
    options.check()
    assert options.warmup_minutes is not None
    tag = f"soak-{time.strftime('%H%M%S')}"
    run_dir = settings.home / "soak" / tag
    settings = replace(
        settings, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}", metrics_port=free_port(),
        models_dir=settings.models_dir or settings.home / "soak-models",
        # Its own store, deleted afterwards: half an hour at 1,000 tx/s is gigabytes of verdicts.
        database_url=settings.database_url or f"sqlite:///{run_dir / 'store.sqlite3'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    duration_s, warmup_s = options.minutes * 60, options.warmup_minutes * 60
    customers = customers_for(options.rate)
    print(f"soak: {options.minutes:g} min at {options.rate:g} tx/s (warm-up "
          f"{options.warmup_minutes:g} min), scenario {options.scenario}, topics {tag}.*; "
          f"broker {settings.bootstrap_servers}", flush=True)
    ensure_champion(settings, DemoOptions(duration_s=TRAIN_SPAN_S, rate=options.rate,
                                          scenario=options.scenario, speedup=options.speedup))
    started_broker = topics_made = False
    worker = api = None
    stop_sim = threading.Event()
    collector: VerdictCollector | None = None
    lags: LagReader | None = None
    samples: list[Sample] = []
    reports: list[SimulationReport] = []
    errors: list[BaseException] = []
    try:
        started_broker = ensure_broker(settings)
        topics_made = True
        ensure_topics(settings)
        population = build_population(options.seed, customers=customers)
        write_baseline(settings.routing_baseline, population.default_weights)
        worker, worker_log = start_worker(settings, f"{tag}-worker.log")
        wait_until_ready(settings, worker)
        api, api_url = start_api(settings, free_port())
        print(f"worker pid {worker.pid} (log {worker_log}); API pid {api.pid} at {api_url}",
              flush=True)
        decisions = topic_name(Topic.DECISIONS, settings.topic_prefix)
        collector = collect = VerdictCollector(settings, end_offsets(settings, decisions))
        collector.start()
        collector.ready.wait(10)
        lags = LagReader(settings)
        sim_options = SimulationOptions(
            scenario=options.scenario, rate=options.rate, duration_s=duration_s,
            seed=options.seed, customers=customers, speedup=options.speedup,
            label_delay_days=options.label_delay_days,
            outage_start_s=0.4 * duration_s, outage_duration_s=0.2 * duration_s)

        def simulate() -> None:
            try:
                # The traffic comes in as a gateway's, under its principal's ACLs.
                reports.append(run_simulation(as_service(settings, "gateway"), sim_options,
                                              on_transaction=collect.on_transaction,
                                              stop=stop_sim))
            except BaseException as exc:  # a delivery failure is a finding, reported below
                errors.append(exc)
                if isinstance(exc, DeliveryFailed):
                    reports.append(exc.report)

        sim = threading.Thread(target=simulate, name="simulator", daemon=True)
        t0 = time.monotonic()
        sim.start()
        _watch(options, worker, api, collector, lags, samples, t0, sim)
        traffic_end = time.monotonic() - t0
        # Drained: every verdict readable, and the API's store holding them all.
        deadline = time.monotonic() + options.drain_timeout_s
        while ((collector.missing() or lags.read()["api_decisions"])
               and time.monotonic() < deadline):
            check_alive(worker, api)
            time.sleep(1.0)
        drained_s = time.monotonic() - t0 - traffic_end
        time.sleep(3 * settings.commit_interval_s)  # the worker's last commits
        samples.append(_sample(worker, api, collector, lags, t0, False))
        collector.stop_event.set()
        collector.join(5)
    finally:
        stop_sim.set()
        if collector is not None:
            collector.stop_event.set()
        if lags is not None:
            lags.close()
        for proc in (api, worker):
            if proc is not None:
                stop_process(proc)
        if topics_made:
            delete_run_topics(settings)
        shutil.rmtree(run_dir, ignore_errors=True)
        if started_broker:
            embedded_broker(settings).stop()
            print("broker: stopped (started by this soak)", flush=True)
    return _summarise(options, samples, collector, reports, errors, warmup_s, traffic_end,
                      drained_s, worker_log)


def _sample(worker: subprocess.Popen[bytes], api: subprocess.Popen[bytes],
            collector: VerdictCollector, lags: LagReader, t0: float, traffic: bool,
            since: int = 0) -> Sample:
    window = percentiles(collector.latencies_ms[since:])
    lag = lags.read()
    return Sample(
        t_s=round(time.monotonic() - t0, 1),
        worker_rss_mib=round(tree_rss_bytes(worker.pid) / MIB, 1),
        api_rss_mib=round(tree_rss_bytes(api.pid) / MIB, 1),
        worker_cpu_s=round(process_usage(worker.pid).cpu_seconds, 2),
        api_cpu_s=round(process_usage(api.pid).cpu_seconds, 2),
        produced=len(collector.produced_at), verdicts=len(collector.first_seen),
        lag_transactions=lag["transactions"], lag_scoring=lag["scoring"],
        lag_api_decisions=lag["api_decisions"],
        latency_p50_ms=window["p50"], latency_p99_ms=window["p99"], traffic=traffic)


def _watch(options: SoakOptions, worker: subprocess.Popen[bytes],
           api: subprocess.Popen[bytes], collector: VerdictCollector, lags: LagReader,
           samples: list[Sample], t0: float, sim: threading.Thread) -> None:
    """Sample every ``sample_s`` while the simulator runs; a dead worker or API ends the soak
    within a second (streams.launcher.ChildExited names it)."""
    next_at, seen = t0 + options.sample_s, 0
    print(f"{'t':>6} {'produced':>9} {'verdicts':>9} {'wRSS MiB':>9} {'aRSS MiB':>9} "
          f"{'lag tx':>7} {'lag sc':>7} {'lag api':>7} {'p50 ms':>7} {'p99 ms':>8}", flush=True)
    while sim.is_alive():
        sim.join(min(1.0, max(0.0, next_at - time.monotonic())))
        check_alive(worker, api)
        if time.monotonic() < next_at or not sim.is_alive():
            continue
        count = len(collector.latencies_ms)
        s = _sample(worker, api, collector, lags, t0, True, seen)
        seen = count
        samples.append(s)
        next_at += options.sample_s
        print(f"{s.t_s:6.0f} {s.produced:9} {s.verdicts:9} {s.worker_rss_mib:9.1f} "
              f"{s.api_rss_mib:9.1f} {s.lag_transactions:7} {s.lag_scoring:7} "
              f"{s.lag_api_decisions:7} {s.latency_p50_ms or 0:7.1f} "
              f"{s.latency_p99_ms or 0:8.1f}", flush=True)


def _summarise(options: SoakOptions, samples: list[Sample], collector: VerdictCollector | None,
               reports: list[Any], errors: list[BaseException], warmup_s: float,
               traffic_s: float, drained_s: float, worker_log: str) -> dict[str, Any]:
    assert collector is not None
    report = reports[0] if reports else None
    acked = report.transactions if report is not None else 0
    lost = collector.missing()
    wall = report.wall_seconds if report is not None else traffic_s
    achieved = round(acked / wall, 1) if wall else 0.0
    growth = memory_growth(samples, warmup_s)
    lag = lag_bounded(samples, warmup_s, options.rate, traffic_s - options.sample_s)
    during = [s for s in samples if s.traffic]
    met = targets(growth, lag, lost)
    fill_min = MEMORY / max(achieved, 1e-9) / 60
    summary: dict[str, Any] = {
        "options": asdict(options),
        "rate_requested_tps": options.rate, "rate_achieved_tps": achieved,
        "rate_reached": achieved >= 0.95 * options.rate,
        "traffic_s": round(wall, 1), "drain_s": round(drained_s, 1),
        "transactions_acked": acked, "verdicts": len(collector.first_seen), "lost": lost,
        "delivery_errors": [str(e) for e in errors],
        "outcomes": report.outcomes if report else 0, "labels": report.labels if report else 0,
        "policies_applied": report.policies_applied if report else 0,
        "decisions": dict(collector.decisions),
        "latency_ms": percentiles(collector.latencies_ms),
        "memory": growth, "lag": lag,
        "memory_note": f"the worker remembers up to {MEMORY:,} scored transactions until their "
                       f"labels come (streams.worker.learning.MEMORY): at {achieved:g} tx/s that "
                       f"fills {fill_min:.1f} min into the run; a warm-up shorter than that "
                       "counts its filling as growth",
        "lag_at_end": {k: getattr(during[-1], f"lag_{k}") if during else None for k in LAGS},
        "lag_after_drain": {k: getattr(samples[-1], f"lag_{k}") if samples else None
                            for k in LAGS},
        "targets": met, "passed": all(met.values()),
        "minutes": per_minute(samples, warmup_s),
        "samples": [asdict(s) for s in samples], "worker_log": worker_log,
    }
    print()
    print(format_soak(summary), flush=True)
    return summary


def format_soak(s: dict[str, Any]) -> str:
    """The per-minute table and the summary with the issue's targets."""
    lines = [f"{'min':>4} {'tx/s':>7} {'verd/s':>7} {'wRSS':>7} {'aRSS':>7} {'wCPU%':>6} "
             f"{'aCPU%':>6} {'lag tx':>7} {'lag sc':>7} {'lag api':>7} {'p50ms':>7} "
             f"{'p99ms':>8}"]
    for r in s["minutes"]:
        lines.append(
            f"{r['minute']:>3}{'w' if r['warmup'] else ' '} {r['produced_tps']:7.0f} "
            f"{r['verdicts_tps']:7.0f} {r['worker_rss_mib']:7.0f} {r['api_rss_mib']:7.0f} "
            f"{r['worker_cpu_pct']:6.0f} {r['api_cpu_pct']:6.0f} "
            f"{r['max_lag_transactions']:7} {r['max_lag_scoring']:7} "
            f"{r['max_lag_api_decisions']:7} {r['latency_p50_ms'] or 0:7.1f} "
            f"{r['latency_p99_ms'] or 0:8.1f}")
    lines.append("(w: warm-up; RSS in MiB at the minute's last sample; lag: worst in the minute, "
                 "records; latency: median of the 10 s windows' percentiles)")
    o, lat, mem, lag = s["options"], s["latency_ms"], s["memory"], s["lag"]
    rate = (f"{s['rate_achieved_tps']:,.1f} tx/s acked (target {o['rate']:g})" +
            ("" if s["rate_reached"] else
             f": THE PRODUCER DID NOT REACH THE TARGET; it reached {s['rate_achieved_tps']:,.1f}"))
    lines += [
        "", f"soak: {o['minutes']:g} min, warm-up {o['warmup_minutes']:g} min, scenario "
            f"{o['scenario']}; drained in {s['drain_s']:.1f} s after the traffic",
        f"  rate            {rate}",
        f"  transactions    {s['transactions_acked']:,} acked, {s['verdicts']:,} with a verdict, "
        f"{s['lost']} lost; {s['outcomes']:,} outcomes, {s['labels']:,} labels, "
        f"{s['policies_applied']} routing policies followed",
        f"  latency         p50 {lat['p50']} ms, p99 {lat['p99']} ms, p99.9 {lat['p99.9']} ms, "
        f"max {lat['max']} ms (produce -> verdict readable)"]
    for proc in ("worker", "api"):
        m = mem[proc]
        lines.append(f"  {proc + ' RSS':<15} {m['rss_mib_after_warmup']} MiB after warm-up -> "
                     f"{m['rss_mib_end']} MiB at the end: growth {m['growth_pct']}%")
    lines.append(f"  note            {s['memory_note']}")
    for key in LAGS:
        g = lag[key]
        lines.append(f"  lag {key:<11} max {g['max']} ({g['max_s']} s of traffic); halves "
                     f"{g['max_first_half']} / {g['max_second_half']}; at end of traffic "
                     f"{s['lag_at_end'][key]}, after drain {s['lag_after_drain'][key]}")
    if s["delivery_errors"]:
        lines.append(f"  simulator       {'; '.join(s['delivery_errors'])}")
    t = s["targets"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines.append(f"targets: memory growth < {GROWTH_LIMIT_PCT:g}%: "
                 f"{verdict(t['memory_growth_under_10pct'])}, lag bounded (second half's max <= "
                 f"{LAG_RATIO:g} x first half's or {LAG_FLOOR_S:g} s of traffic, max <= "
                 f"{LAG_CAP_S:g} s): {verdict(t['lag_bounded'])}, lost 0: "
                 f"{verdict(t['lost_zero'])}")
    return "\n".join(lines)
