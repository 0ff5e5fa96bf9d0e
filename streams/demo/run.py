"""`rakshit demo`: the whole pipeline on one machine, with figures a person can check.

Starts (or reuses) the broker, creates the topics, starts a worker process, drives the simulator,
and reads the decision topic as a downstream service would (read_committed), until every
transaction it produced has its verdict. Latency is measured from the moment the simulator hands a
transaction to its producer to the moment its verdict is readable by that consumer.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from agents.routing.baseline import write_baseline
from schemas.codec import make_codec
from streams.admin import delete_run_topics, end_offsets, ensure_topics, free_port
from streams.api.server import ROLE_USERS, issue_token, tokens_path
from streams.broker import embedded_broker, ensure_broker
from streams.config import Settings
from streams.launcher import (
    as_service,
    check_alive,
    start_api,
    start_worker,
    stop_process,
    wait_until_ready,
)
from streams.simulator.population import build_population
from streams.simulator.scenarios import get_scenario
from streams.topics import Topic, topic_name


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 20.0
    rate: float = 200.0
    scenario: str = "fraud"
    seed: int | None = None
    keep_broker: bool = False
    # Event-time seconds per wall second: fraud campaigns unfold over minutes of event time, so
    # a 20 s demo at 1x would end before a card-testing burst does.
    speedup: float = 20.0
    bad_records: int = 21  # malformed records mixed into the traffic, three of each kind
    verdict_timeout_s: float = 60.0
    # Outage placement in wall seconds (scenarios with an outage). The Analyst arms a cell's
    # detectors once its baseline holds 1,000 attempts, so the outage must not start at once.
    outage_start_s: float | None = None
    outage_duration_s: float | None = None
    api_port: int = 0  # 0: a free port
    hold_s: float = 0.0  # keep worker and dashboard up this long after the traffic


def outage_window(options: DemoOptions) -> tuple[float, float]:
    """Where the outage sits in a demo run: by default from 40% to 70% of the run, so the
    summary shows the healthy baseline, detection, healing and recovery."""
    start = options.outage_start_s if options.outage_start_s is not None \
        else 0.4 * options.duration_s
    length = options.outage_duration_s if options.outage_duration_s is not None \
        else 0.3 * options.duration_s
    return start, length


def read_routing(settings: Settings, start: dict[str, dict[int, int]]) -> dict[str, list[Any]]:
    """Every hypothesis, experiment step and policy published since the run began."""
    codec = make_codec(settings.schema_registry_url)
    found: dict[str, list[Any]] = {}
    for topic, schema in ((Topic.HYPOTHESES, "hypothesis"), (Topic.EXPERIMENTS, "experiment"),
                          (Topic.ROUTING_POLICY, "routing_policy")):
        name = topic_name(topic, settings.topic_prefix)
        end = end_offsets(settings, name)
        consumer = Consumer({**settings.kafka_config(),
                             "group.id": f"demo-read-{os.getpid()}", "enable.auto.commit": False,
                             "isolation.level": "read_committed"})
        consumer.assign([TopicPartition(name, p, start[name].get(p, 0)) for p in end])
        records: list[Any] = []
        todo = sum(end.values()) - sum(start[name].get(p, 0) for p in end)
        deadline = time.monotonic() + 20
        while len(records) < todo and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(codec.decode(msg.value() or b"", topic=name, expect=schema).record)
        consumer.close()
        found[schema] = records
    return found


def routing_summary(found: dict[str, list[Any]], event_start_ms: int,
                    speedup: float) -> dict[str, Any]:
    """What the closed loop did, in the order it did it. The agents work in event time; times
    here are wall seconds into the run (event seconds / speedup), like the outage window."""
    def at(moment: datetime) -> float:
        return round((moment.timestamp() * 1000 - event_start_ms) / 1000.0 / speedup, 1)

    hyps = [{"t_s": at(h["created_at"]), "status": h["status"], "scope": h["scope"],
             "cell": f"{h['route']}|{h['issuer_id']}", "cause": h["suspected_cause"],
             "confidence": round(h["confidence"], 4),
             "observed_rate": round(h["evidence"]["observed_rate"], 3),
             "baseline_rate": round(h["evidence"]["baseline_rate"], 3)}
            for h in found.get("hypothesis", [])]
    steps = [{"t_s": at(e["at"]), "step": e["step"], "issuer": e["issuer_id"],
              "from": e["from_route"], "to": e["to_route"], "share": round(e["share"], 3),
              "guardrail": e["guardrail"], "reason": e["reason"]}
             for e in found.get("experiment", [])]
    policies = [{"t_s": at(p["updated_at"]), "issuer": p["issuer_id"], "version": p["version"],
                 "weights": {w["route"]: round(w["weight"], 3) for w in p["weights"]}}
                for p in found.get("routing_policy", [])]
    return {"hypotheses": hyps, "experiment_steps": steps, "policies": policies}


class VerdictCollector(threading.Thread):
    """Reads the decision topic from given offsets and matches verdicts to produce times."""

    def __init__(self, settings: Settings, start: dict[int, int]) -> None:
        super().__init__(name="verdict-collector", daemon=True)
        self.settings = settings
        self.topic = topic_name(Topic.DECISIONS, settings.topic_prefix)
        self.start_offsets = start
        self.produced_at: dict[str, float] = {}
        self.first_seen: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.verdicts = 0
        self.backlog = 0
        self.decisions: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self.ready = threading.Event()

    def on_transaction(self, transaction_id: str, produced_at: float) -> None:
        self.produced_at[transaction_id] = produced_at

    def run(self) -> None:
        codec = make_codec(self.settings.schema_registry_url)
        consumer = Consumer({**self.settings.kafka_config(),
                             "group.id": f"rakshit-demo-{time.time_ns()}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             # Answered at the first byte: nothing added to a latency measured
                             # here (a minimum size would add up to the wait at low rates).
                             "fetch.wait.max.ms": 5})
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in self.start_offsets.items()])
        self.ready.set()
        try:
            while not self.stop_event.is_set():
                # poll, not consume(): a batch call waits for its batch or its timeout, which
                # would add up to that timeout to every latency measured here.
                msg = consumer.poll(0.1)
                if msg is not None and not msg.error():
                    now = time.time()
                    verdict = codec.decode(msg.value() or b"", topic=self.topic,
                                           expect="verdict").record
                    tx_id = verdict["transaction_id"]
                    produced = self.produced_at.get(tx_id)
                    if produced is None:  # backlog from an earlier run, not ours to count
                        self.backlog += 1
                        continue
                    self.verdicts += 1
                    if tx_id in self.first_seen:
                        continue
                    self.first_seen[tx_id] = now
                    self.decisions[verdict["decision"]] += 1
                    self.fallbacks.update(verdict["fallbacks"])
                    self.latencies_ms.append((now - produced) * 1000.0)
        finally:
            consumer.close()

    def missing(self) -> int:
        return sum(1 for tx in list(self.produced_at) if tx not in self.first_seen)


def ensure_champion(settings: Settings, options: DemoOptions) -> None:
    """The demo decides with a model trained on the kind of traffic it scores: simulator runs
    shaped like its own (population, event rate and span, each from empty state), kept in its
    own registry (``Settings.models``: RAKSHIT_HOME/demo-models unless RAKSHIT_MODELS_DIR says
    otherwise) so the champion serving handbook replays is left alone. Trained once, when that
    registry has no such champion (about 40 s here). A champion trained on the handbook scored
    the demo's traffic with most features' PSI in the "act" range: its drift panel cried wolf
    from the first report."""
    from streams.simulator.scenarios import SCENARIOS
    from streams.simulator.training import DEMO_SOURCE, train_for_demo
    from streams.worker.chain import registry_for

    registry = registry_for(settings)
    champion = registry.champion_version()
    customers = demo_customers(options.rate)
    event_rate, span_s = options.rate / options.speedup, options.duration_s * options.speedup
    # A model learns fraud from fraud: a scenario without any (normal, the outages) trains on
    # the same shape of traffic with the fraud scenario's campaigns in it.
    scenario = options.scenario if SCENARIOS[options.scenario].fraud is not None else "fraud"
    # The shape as train_for_demo writes it into the model's notes: another rate, duration or
    # scenario is other traffic (card histories of another length), so it gets its own model.
    shape = (f"of {span_s:g} event-s at {event_rate:g} tx/s, {customers} customers, "
             f"scenario {scenario}")
    if champion is not None:
        meta = registry.meta(champion)
        if meta.get("source") == DEMO_SOURCE and shape in str(meta.get("notes", "")):
            print(f"model: champion {champion} ({registry.root})", flush=True)
            return
    print(f"model: no champion trained on simulator traffic shaped like this demo ({shape}) "
          f"in {registry.root}; training one (once per shape, well under a minute)...",
          flush=True)
    trained = train_for_demo(registry, customers=customers, event_rate=event_rate,
                             span_s=span_s, scenario=scenario)
    print(f"model: champion {trained['version']} from {trained['runs']} runs, "
          f"{trained['transactions']} transactions in {trained['seconds']} s; held-out AP "
          f"{trained['held_out_ap']:.3f}", flush=True)


def read_drift(api_url: str, token: str) -> dict[str, Any] | None:
    """The dashboard's drift panel as the API serves it (PSI per feature over its recent
    verdicts, against the champion's training baselines), for the summary."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{api_url}api/models",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            drift: dict[str, Any] | None = json.loads(response.read()).get("drift")
            return drift
    except (OSError, ValueError):
        return None


def inject_bad_records(settings: Settings, count: int, seed: int) -> Counter[str]:
    """Produce malformed records on the transactions topic, as a misbehaving gateway would."""
    from confluent_kafka import Producer

    from streams.simulator.bad_input import bad_records
    from streams.simulator.population import build_population
    from streams.simulator.scenarios import get_scenario
    from streams.simulator.traffic import EventClock, TrafficGenerator

    generator = TrafficGenerator(build_population(seed, customers=50, merchants=10),
                                 get_scenario("normal"), seed, EventClock.for_run(1.0))
    template = generator.generate().transaction
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    producer = Producer({**settings.kafka_config()})
    kinds: Counter[str] = Counter()
    for reason, data in bad_records(template, make_codec(settings.schema_registry_url), topic,
                                    count, seed):
        producer.produce(topic, key=b"misbehaving-gateway", value=data)
        kinds[reason] += 1
    if producer.flush(30):
        raise RuntimeError("bad records were not delivered")
    return kinds


def demo_customers(rate: float) -> int:
    """Enough cardholders that honest cards keep a plausible pace at the requested rate.

    With a fixed 2,000 customers, 200 tx/s would mean one transaction per customer every ten
    seconds, and the velocity rules would rightly flag honest cards.
    """
    return int(min(200_000, max(2_000, rate * 100)))


PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99, p99.9 and max (None each without values). With fewer than a thousand
    values p99.9 is an interpolation towards the maximum, not a measured tail."""
    if not values:
        return {**dict.fromkeys(PERCENTILES), "max": None}
    arr = np.asarray(values)
    out: dict[str, float | None] = {key: round(float(np.percentile(arr, q)), 2)
                                    for key, q in PERCENTILES.items()}
    out["max"] = round(float(arr.max()), 2)
    return out


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    from streams.simulator.producer import SimulationOptions, run_simulation

    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(3), "big")
    # Each demo gets its own topics and worker state: a worker keeps velocity, route baselines
    # and experiments across restarts (as it must in production), and a second demo with a new
    # population would otherwise start from the last one's cooldowns and open experiments.
    tag = f"demo-{time.strftime('%H%M%S')}-{seed}"
    settings = replace(settings, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}",
                       models_dir=settings.models_dir or settings.home / "demo-models")
    print(f"broker: {settings.bootstrap_servers}; scenario {options.scenario}, seed {seed}; "
          f"topics {tag}.*", flush=True)
    ensure_champion(settings, options)
    # Everything the demo starts is stopped on the way out, however it goes: SIGTERM and SIGINT
    # arrive as streams.launcher.Interrupted (streams.cli), a worker or API that dies ends the
    # run within a second as streams.launcher.ChildExited naming it, and a demo killed outright
    # takes its worker and API with it (each watches its parent).
    started_broker = False
    worker: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    stop_sim = threading.Event()
    collector: VerdictCollector | None = None
    topics_made = False
    try:
        # A broker this demo starts goes with it, even on kill -9, unless it is to be kept.
        started_broker = ensure_broker(settings, with_parent=not options.keep_broker)
        topics_made = True  # from here on there may be topics of this run to delete
        ensure_topics(settings)
        decisions = topic_name(Topic.DECISIONS, settings.topic_prefix)
        dead_letters = topic_name(Topic.DEAD_LETTERS, settings.topic_prefix)
        dlq_before = sum(end_offsets(settings, dead_letters).values())
        routing_start = {topic_name(t, settings.topic_prefix): end_offsets(
            settings, topic_name(t, settings.topic_prefix))
            for t in (Topic.HYPOTHESES, Topic.EXPERIMENTS, Topic.ROUTING_POLICY)}
        population = build_population(seed, customers=demo_customers(options.rate))
        write_baseline(settings.routing_baseline, population.default_weights)
        outage_start, outage_length = outage_window(options)

        worker, worker_log = start_worker(settings, "demo-worker.log")
        print(f"worker: pid {worker.pid}, log {worker_log}; waiting until it has recovered "
              "its tables...", flush=True)
        wait_until_ready(settings, worker)
        api, api_url = start_api(settings, options.api_port or free_port())
        # Fresh tokens, valid a day, shown once here (the store in tokens_path keeps hashes).
        tokens = {role: issue_token(settings, role) for role in ROLE_USERS}
        print(f"dashboard: {api_url} (up while the demo runs; fresh tokens, valid 24 h, "
              f"stored hashed in {tokens_path(settings)}):", flush=True)
        for role, token in tokens.items():
            print(f"  {role:8} {ROLE_USERS[role]:14} {token}", flush=True)
        collector = VerdictCollector(settings, end_offsets(settings, decisions))
        collector.start()
        collector.ready.wait(10)

        report: list[Any] = []
        on_transaction = collector.on_transaction
        gateway = as_service(settings, "gateway")  # the traffic comes in as a gateway's
        sim = threading.Thread(target=lambda: report.append(run_simulation(
            gateway, SimulationOptions(scenario=options.scenario, rate=options.rate,
                                       duration_s=options.duration_s, seed=seed,
                                       customers=demo_customers(options.rate),
                                       speedup=options.speedup,
                                       outage_start_s=outage_start,
                                       outage_duration_s=outage_length),
            on_transaction=on_transaction, stop=stop_sim)), name="simulator", daemon=True)
        t0 = time.time()
        run_start_ms = int(t0 * 1000)
        sim.start()
        injected = inject_bad_records(gateway, options.bad_records, seed)
        while sim.is_alive():
            sim.join(1.0)
            check_alive(worker, api)  # a dead worker ends the demo now, not at the timeout
            print(f"  {time.time() - t0:5.1f}s  produced {len(collector.produced_at):>7}  "
                  f"verdicts {len(collector.first_seen):>7}", flush=True)
        deadline = time.monotonic() + options.verdict_timeout_s
        while collector.missing() and time.monotonic() < deadline:
            check_alive(worker, api)
            time.sleep(0.2)
        collector.stop_event.set()
        collector.join(5)
        dlq = sum(end_offsets(settings, dead_letters).values()) - dlq_before
        viewer = tokens["viewer"]
        drift = read_drift(api_url, viewer)
        time.sleep(2.0)  # the routing agent's last steps for the tail of the traffic
        # The simulator's clock (EventClock.for_run) starts duration x (speedup - 1) in the past.
        event_start_ms = run_start_ms - options.duration_s * (options.speedup - 1) * 1000
        routing = routing_summary(read_routing(settings, routing_start), int(event_start_ms),
                                  options.speedup)
        if options.hold_s > 0:
            print(f"holding {options.hold_s:.0f}s for the dashboard ({api_url})...", flush=True)
            deadline = time.monotonic() + options.hold_s
            while time.monotonic() < deadline:
                check_alive(worker, api)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        stop_sim.set()
        if collector is not None:
            collector.stop_event.set()
        for proc in (api, worker):
            if proc is not None:
                stop_process(proc)
        if options.keep_broker:
            print(f"broker: left running with this demo's topics ({tag}.*): "
                  f"RAKSHIT_TOPIC_PREFIX={tag}. rakshit tail experiments")
        else:
            if topics_made:
                delete_run_topics(settings)
            if started_broker:
                embedded_broker(settings).stop()
                print("broker: stopped (started by this demo; --keep-broker leaves it up)")

    transactions = len(collector.produced_at)
    span = (max(collector.first_seen.values(), default=t0) - t0) if collector.first_seen else 0.0
    summary: dict[str, Any] = {
        "scenario": options.scenario,
        "speedup": options.speedup,
        "seed": seed,
        "rate_requested_tps": options.rate,
        "duration_s": options.duration_s,
        "transactions": transactions,
        "verdicts": collector.verdicts,
        "unique_verdicts": len(collector.first_seen),
        "missing_verdicts": collector.missing(),
        "backlog_verdicts": collector.backlog,
        "dead_letters": dlq,
        "bad_records_injected": sum(injected.values()),
        "latency_ms": percentiles(collector.latencies_ms),
        "throughput_tps": round(len(collector.first_seen) / span, 1) if span > 0 else 0.0,
        "decisions": dict(collector.decisions),
        "fallbacks": dict(collector.fallbacks),
        "simulator": str(report[0]) if report else None,
        "outage_wall_s": [outage_start, outage_start + outage_length]
        if get_scenario(options.scenario).outage else None,
        "routing": routing,
        "drift": drift,
        "dashboard": api_url,
        "worker_log": worker_log,
    }
    print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print()
    print(f"Rakshit Pay demo: scenario {s['scenario']}, {s['duration_s']:.0f}s at "
          f"{s['rate_requested_tps']:.0f} tx/s requested")
    print(f"  transactions produced   {s['transactions']}")
    print(f"  verdicts read           {s['verdicts']} ({s['unique_verdicts']} unique, "
          f"{s['missing_verdicts']} missing)")
    print(f"  dead letters            {s['dead_letters']} "
          f"({s['bad_records_injected']} malformed records injected)")
    print(f"  decisions               {s['decisions']}")
    print(f"  latency produce->verdict p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
          f"p99 {lat['p99']} ms, p99.9 {lat['p99.9']} ms, max {lat['max']} ms")
    print(f"  throughput              {s['throughput_tps']} verdicts/s")
    routing = s["routing"]
    if s["outage_wall_s"]:
        a, b = s["outage_wall_s"]
        print(f"  outage injected         {a:.0f}s-{b:.0f}s of the run (wall clock)")
    print(f"  routing loop            {len(routing['hypotheses'])} hypotheses, "
          f"{len(routing['experiment_steps'])} experiment steps, "
          f"{len(routing['policies'])} policy versions")
    for h in routing["hypotheses"][:8]:
        print(f"    {h['t_s']:6.1f}s hypothesis {h['status']:8} {h['scope']:12} {h['cell']} "
              f"{h['cause']} confidence {h['confidence']} "
              f"(rate {h['observed_rate']} vs {h['baseline_rate']})")
    for e in [e for e in routing["experiment_steps"] if e["step"] != "OBSERVATION"][:14]:
        rule = f" [{e['guardrail']}]" if e["guardrail"] else ""
        print(f"    {e['t_s']:6.1f}s experiment {e['step']:11} {e['issuer']} {e['from']}->"
              f"{e['to']} share {e['share']}{rule}")
    drift = s.get("drift")
    if drift and drift.get("features"):
        rows = drift["features"]
        counts = Counter(f["status"] for f in rows)
        worst = ", ".join(f"{f['name']} {f['psi']}" for f in rows[:4])
        print(f"  drift (model {drift['model_version']}, {drift.get('verdicts', 0)} verdicts) "
              f"{dict(counts)}; worst: {worst}")
