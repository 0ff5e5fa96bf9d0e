"""`rakshit`: one command for operators, gateways' test traffic and the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from streams.config import HANDBOOK_DIR, Settings
from streams.simulator.scenarios import scenario_names

# Subcommands whose SIGTERM and SIGINT become streams.launcher.Interrupted: those that start
# processes (each stops them on the way out) and the long-running worker and API (clean stop
# during start-up; each hands the signals to its own loop once up).
SUPERVISING = frozenset({"demo", "bench", "evaluate", "worker", "api"})

# `rakshit worker --loglevel` names, as Faust spells them, for the raw passthrough's logging.
LOG_LEVELS = {"crit": 50, "error": 40, "warn": 30, "info": 20, "debug": 10}


def iso_day(text: str) -> date:
    """A YYYY-MM-DD date for argparse (which names the option in its error)."""
    try:
        if len(text) == 10 and text[4] == text[7] == "-":
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rakshit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    broker = sub.add_parser("broker", help="run the embedded Kafka broker (127.0.0.1 only)")
    broker.add_argument("action", choices=("start", "stop", "status"))

    topics = sub.add_parser("topics", help="list topics with partitions and end offsets")
    topics.add_argument("--create", action="store_true", help="create missing topics first")
    topics.add_argument("--all", action="store_true", help="include topics that are not ours")

    topics.add_argument("--users", action="store_true",
                        help="first register every principal's SCRAM login, as the broker's own "
                             "principal (docker-compose's set-up; the embedded broker does it "
                             "itself)")

    credentials = sub.add_parser(
        "credentials", help="generate the Kafka principals' password files (0600; the embedded "
                            "broker does it at its first start), and docker-compose's copies")
    credentials.add_argument("--broker-uid", type=int, default=None,
                             help="owner of the Kafka container's copy (run as root)")
    credentials.add_argument("--service-uid", type=int, default=None,
                             help="owner of the services' copies (run as root)")

    worker = sub.add_parser("worker", help="run the Faust worker")
    worker.add_argument("--loglevel", default="info",
                        choices=("crit", "error", "warn", "info", "debug"))
    worker.add_argument("--passthrough", nargs="?", const="faust", default=None,
                        choices=("faust", "raw"),
                        help="forward transactions untouched, the benchmark's baselines: faust "
                             "(also a bare --passthrough) on the worker's Faust client, raw on "
                             "confluent-kafka alone")

    simulate = sub.add_parser("simulate", help="produce gateway traffic")
    simulate.add_argument("--scenario", default="normal", choices=scenario_names())
    simulate.add_argument("--rate", type=float, default=100.0, help="transactions per second")
    simulate.add_argument("--duration", type=float, default=30.0,
                          help="seconds of wall time; 0 runs until interrupted")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--speedup", type=float, default=1.0,
                          help="event-time seconds per wall second")

    replay = sub.add_parser("replay", help="replay handbook-layout Parquet data as transactions")
    replay.add_argument("--data", type=Path, default=HANDBOOK_DIR / "raw")
    replay.add_argument("--from", dest="start", type=date.fromisoformat, required=True)
    replay.add_argument("--to", dest="end", type=date.fromisoformat, required=True)
    replay.add_argument("--speedup", type=float, default=0.0,
                        help="event-time seconds per wall second; 0 is as fast as possible")

    tail = sub.add_parser("tail", help="print decoded events as they arrive")
    tail.add_argument("topic", help="short name (decisions) or full topic name")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=None, help="stop after N records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    train = sub.add_parser("train", help="train a LightGBM model and register it")
    train.add_argument("--source", choices=("handbook", "simulator"), default="handbook",
                       help="handbook data, or N days of simulator traffic made offline (judged "
                            "with and without the merchant and device features)")
    train.add_argument("--data", type=Path, default=HANDBOOK_DIR)
    train.add_argument("--from", dest="start", type=date.fromisoformat, default=None,
                       help="training window start (default: the newest labelled week)")
    train.add_argument("--to", dest="end", type=date.fromisoformat, default=None,
                       help="training window end, exclusive")
    train.add_argument("--promote", action="store_true",
                       help="make it the champion (the first model always is)")
    train.add_argument("--days", type=int, default=35, help="simulator: days of traffic")
    train.add_argument("--seed", type=int, default=7, help="simulator: the world and its traffic")
    train.add_argument("--tx-per-day", type=float, default=10_000.0,
                       help="simulator: transactions per day of event time")

    models = sub.add_parser("models", help="list, promote, roll back, set a challenger")
    models.add_argument("action", nargs="?", default="list",
                        choices=("list", "promote", "rollback", "challenger", "shadow"))
    models.add_argument("version", nargs="?", default=None)
    models.add_argument("--share", type=float, default=0.1,
                        help="challenger: share of cards it decides for")

    evaluate = sub.add_parser("evaluate", help="handbook protocols on features streamed through "
                                                "Kafka, beside the published numbers")
    evaluate.add_argument("--data", type=Path, default=HANDBOOK_DIR,
                          help="a folder laid out like the handbook (raw/ with monthly Parquet)")
    evaluate.add_argument("--protocol", choices=("chapter3", "chapter5"), default=None,
                          help="a handbook protocol (default chapter5 when no window is given)")
    evaluate.add_argument("--train", nargs=2, type=iso_day, metavar=("START", "END"),
                          help="custom window: training days, inclusive (YYYY-MM-DD)")
    evaluate.add_argument("--test", nargs=2, type=iso_day, metavar=("START", "END"),
                          help="custom window: test days, inclusive; after --train's end plus "
                               "--delay-days")
    evaluate.add_argument("--delay-days", type=int, default=None,
                          help="custom window: days until a label is known (default 7, the "
                               "handbook's)")
    evaluate.add_argument("--summary-json", type=Path, default=None)
    evaluate.add_argument("--curves", type=Path, default=Path("artifacts/curves"),
                          help="where the ROC and precision-recall PNGs go")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument("what", choices=("pipeline", "lane", "scoring", "healing", "state",
                                        "cost", "soak", "faults"))
    bench.add_argument("--transactions", type=int, default=20_000)
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--workers", type=int, default=1,
                       help="pipeline: worker processes sharing the topics in the worker runs")
    bench.add_argument("--traffic", default="handbook", choices=("handbook", "simulator"),
                       help="pipeline: the transactions (see streams.bench.pipeline._records)")
    bench.add_argument("--cards", type=int, default=1_000_000,
                       help="state: card states written to the changelog and recovered")
    bench.add_argument("--seeds", type=int, default=3,
                       help="healing: runs per scenario (medians are reported)")
    bench.add_argument("--month-rate", type=float, default=0.5,
                       help="healing: attempts/s per cell in the simulated healthy month")
    bench.add_argument("--only", default=None,
                       help="healing: one scenario kind (outage, latency, ..., healthy) or name; "
                            "faults: a comma-separated list (broker-kill, broker-pause, "
                            "worker-kill, state-loss, api-kill, db-stop)")
    bench.add_argument("--after", type=float, default=40.0,
                       help="faults: seconds of traffic after each fault's end")
    bench.add_argument("--target-ms", type=float, default=100.0,
                       help="faults: the verdict latency target recovery is measured against")
    bench.add_argument("--vcpu-hour-usd", type=float, default=None,
                       help="cost: USD per vCPU-hour (default AWS Fargate on-demand, Linux/x86, "
                            "us-east-1; printed with the figures)")
    bench.add_argument("--gb-hour-usd", type=float, default=None,
                       help="cost: USD per GB-hour of memory (default as --vcpu-hour-usd)")
    bench.add_argument("--minutes", type=float, default=30.0,
                       help="soak: minutes of traffic")
    bench.add_argument("--rate", type=float, default=None,
                       help="soak: transactions per second (default 1000); faults: the steady "
                            "traffic's (default 200)")
    bench.add_argument("--warmup-minutes", type=float, default=None,
                       help="soak: minutes before memory growth and lag are judged (default: "
                            "until the worker's state is at its steady size, 16 at 300 tx/s)")
    bench.add_argument("--summary-json", type=Path, default=None)

    api = sub.add_parser("api", help="the analysts' and SREs' HTTP API and live dashboard")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--tokens", type=Path, default=None,
                     help="the hashed token store (`rakshit tokens issue|rotate|revoke|list` "
                          "manages it); default RAKSHIT_HOME/api-tokens.json")

    tokens = sub.add_parser("tokens", help="API tokens, stored hashed: issue, rotate, revoke")
    tokens.add_argument("action", choices=("issue", "rotate", "revoke", "list"))
    tokens.add_argument("--user", default=None, help="whose token (issue, rotate, revoke)")
    tokens.add_argument("--role", default=None, choices=("viewer", "analyst", "admin"),
                        help="issue: the token's role")
    tokens.add_argument("--ttl-days", type=float, default=None,
                        help="days until it expires (issue: 30; rotate: as the old one)")
    tokens.add_argument("--file", type=Path, default=None,
                        help="the token store; default RAKSHIT_HOME/api-tokens.json")

    demo = sub.add_parser("demo", help="broker, topics, worker and simulator, with a summary")
    demo.add_argument("--duration", type=float, default=20.0)
    demo.add_argument("--rate", type=float, default=200.0)
    demo.add_argument("--scenario", default="fraud", choices=scenario_names())
    demo.add_argument("--seed", type=int, default=None,
                      help="population seed (default: a new one per run, printed; velocity state "
                           "persists in the worker, so re-running one seed within the hour "
                           "makes the same cards look busier)")
    demo.add_argument("--speedup", type=float, default=20.0,
                      help="event-time seconds per wall second (fraud campaigns take minutes)")
    demo.add_argument("--bad-records", type=int, default=21,
                      help="malformed records to mix in (they must all reach the dead letters)")
    demo.add_argument("--outage-start", type=float, default=None,
                      help="wall seconds into the run an outage scenario degrades (default 40%%)")
    demo.add_argument("--outage-duration", type=float, default=None,
                      help="wall seconds the outage lasts (default 30%% of the run)")
    demo.add_argument("--api-port", type=int, default=0, help="dashboard port (0: a free one)")
    demo.add_argument("--hold", type=float, default=0.0,
                      help="seconds to keep the worker and dashboard up after the traffic")
    demo.add_argument("--summary-json", type=Path, default=None)
    demo.add_argument("--keep-broker", action="store_true",
                      help="leave a broker the demo started running afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(args.command, lambda: command(args))


def guarded(name: str, run: Callable[[], int]) -> int:
    """Run a subcommand so that it fails loudly and cleans up: SIGTERM and SIGINT stop every
    process it started (exit 128 + the signal), and a child that died or a process that cannot
    start ends it with one line on stderr (exit 1). streams.launcher has the parts."""
    from streams.launcher import (
        ChildExited,
        Interrupted,
        StartupFailed,
        children,
        one_line,
        raise_on_signals,
        stop_children,
        stopped_on_signal,
        watch_parent,
    )

    watch_parent()  # a child of the demo, a benchmark or a test: stop when it goes away
    # The worker's Faust takes SIGTERM and SIGINT over once it is up.
    restore = raise_on_signals() if name in SUPERVISING else (lambda: None)
    before = {child.proc.pid for child in children()}  # not ours to stop (a caller's)
    try:
        try:
            return run()
        finally:
            try:
                stop_children(keep=before)
            finally:
                restore()
    except Interrupted as stop:
        left = stopped_on_signal()
        stopped = f"; stopped {', '.join(f'{c.name} pid {c.proc.pid}' for c in left)}" \
            if left else ""
        print(f"rakshit {name}: stopped by {stop.signame}{stopped}", file=sys.stderr, flush=True)
        return stop.exit_code
    except (ChildExited, StartupFailed) as exc:
        print(f"rakshit {name}: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return 1


def command(args: argparse.Namespace) -> int:
    settings = Settings.from_env()

    if args.command == "broker":
        from streams.broker import embedded_broker

        if not settings.embedded:
            print(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: using that cluster; "
                  "the embedded broker is not managed")
            return 0
        broker = embedded_broker(settings)
        if args.action == "start":
            print(broker.start().describe())
        elif args.action == "stop":
            print("stopped" if broker.stop() else "not running")
        else:
            status = broker.status()
            print(status.describe())
            return 0 if status.answering else 3
        return 0

    if args.command == "topics":
        from streams.admin import describe_topics, ensure_topics
        from streams.broker import ensure_broker

        if args.users:
            _register_users(settings)
        ensure_broker(settings)
        if args.create:
            for name, state in ensure_topics(settings).items():
                print(f"{name}: {state}")
        print(f"{'topic':<40} {'partitions':>10} {'records':>10}  end offsets")
        for info in describe_topics(settings, prefix_only=not args.all):
            ends = ",".join(str(e) for e in info.end_offsets)
            print(f"{info.name:<40} {info.partitions:>10} {info.records:>10}  {ends}")
        return 0

    if args.command == "credentials":
        from infra.kafka.launcher import compose_credentials

        for path in compose_credentials(settings.credentials_dir, args.broker_uid,
                                        args.service_uid):
            print(path)  # where, never what
        return 0

    if args.command == "worker":
        from streams.launcher import serve_metrics

        serve_metrics(settings)  # first: a taken port ends it at once, before anything starts
        broker_up(settings)
        if _service(settings, "worker") is not settings:  # run by hand: set up as the operator
            from streams.launcher import prepare_run

            prepare_run(settings)
            settings = _service(settings, "worker")
        if args.passthrough == "raw":
            import logging
            from dataclasses import replace

            from streams.admin import ensure_topics
            from streams.bench.passthrough import run_raw_passthrough

            logging.basicConfig(level=LOG_LEVELS[args.loglevel],
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            ensure_topics(settings)
            run_raw_passthrough(replace(settings, metrics_port=0))  # metrics served above
            return 0
        from streams.worker.app import run_worker

        run_worker(settings, args.loglevel, passthrough=args.passthrough == "faust")
        return 0

    if args.command == "simulate":
        from streams.admin import ensure_topics
        from streams.broker import ensure_broker
        from streams.simulator.producer import SimulationOptions, run_simulation

        ensure_broker(settings)
        ensure_topics(settings)  # as the operator: the topics and their ACLs
        report = run_simulation(_gateway(settings), SimulationOptions(
            scenario=args.scenario, rate=args.rate, duration_s=args.duration, seed=args.seed,
            speedup=args.speedup))
        print(report)
        return 0

    if args.command == "replay":
        from streams.admin import ensure_topics
        from streams.broker import ensure_broker
        from streams.simulator.producer import replay_handbook

        ensure_broker(settings)
        ensure_topics(settings)  # as the operator: the topics and their ACLs
        print(replay_handbook(_gateway(settings), args.data, args.start, args.end, args.speedup))
        return 0

    if args.command == "tail":
        from streams.tools.tail import tail

        with contextlib.suppress(KeyboardInterrupt):
            tail(settings, args.topic, args.from_beginning, args.max, args.json)
        return 0

    if args.command == "train" and args.source == "simulator":
        from streams.simulator.training import train_simulated
        from streams.worker.chain import registry_for

        trained = train_simulated(registry_for(settings), days=args.days, seed=args.seed,
                                  tx_per_day=args.tx_per_day, promote=args.promote or None)
        print(json.dumps(trained, indent=2, default=str))
        return 0

    if args.command == "train":
        from scoring.lifecycle import train_and_register
        from streams.worker.chain import registry_for

        trained = train_and_register(args.data, settings.features_cache,
                                     registry_for(settings), start=args.start, end=args.end,
                                     promote=args.promote or None)
        print(json.dumps(trained, indent=2, default=str))
        return 0

    if args.command == "tokens":
        return tokens_command(settings, args)

    if args.command == "models":
        return models_command(settings, args.action, args.version, args.share)

    if args.command == "evaluate":
        from scoring.train import Window, format_report
        from streams.bench.evaluate import check_window_data, evaluate, window_from_args
        from streams.broker import ensure_broker

        try:
            target = window_from_args(args.protocol, args.train, args.test, args.delay_days)
            if isinstance(target, Window):
                check_window_data(target, args.data)
        except ValueError as exc:
            print(f"rakshit evaluate: error: {exc}", file=sys.stderr)
            return 2
        ensure_broker(settings)
        result = evaluate(settings, args.data, target, args.summary_json, args.curves)
        print(format_report(result))
        worst = max(result["parity_max_relative_error"].items(), key=lambda kv: kv[1])
        print(f"parity (streamed vs offline, {len(result['parity_max_relative_error'])} "
              f"features): worst {worst[0]} {worst[1]:.2e} -> "
              f"{'OK' if result['parity_ok'] else 'MISMATCH'}")
        return 0 if result["parity_ok"] else 1

    if args.command == "bench":
        from streams.admin import ensure_topics
        from streams.bench.pipeline import bench_pipeline
        from streams.broker import ensure_broker

        if args.what == "healing":
            from streams.bench.healing import bench_healing, format_table, targets_met

            rows = bench_healing(args.seeds, args.month_rate, args.only, args.summary_json)
            print()
            print(format_table(rows))
            print()
            for line in targets_met(rows):
                print(line)
            return 0
        if args.what == "faults":
            from streams.bench.faults import FaultOptions, bench_faults, fault_names
            from streams.bench.faults import format_table as fault_table
            from streams.bench.faults import targets_met as faults_met

            try:
                fault_names(args.only)
            except ValueError as exc:
                print(f"rakshit bench faults: error: {exc}", file=sys.stderr)
                return 2
            fault_rows = bench_faults(settings, args.only,
                                      FaultOptions(rate=args.rate or 200.0, after_s=args.after,
                                                   latency_target_ms=args.target_ms),
                                      args.summary_json)
            print()
            print(fault_table(fault_rows))
            print()
            for line in faults_met(fault_rows, args.target_ms):
                print(line)
            return 0
        if args.what == "soak":
            from streams.bench.soak import SoakOptions, run_soak

            try:
                options = SoakOptions(minutes=args.minutes, rate=args.rate or 1000.0,
                                      warmup_minutes=args.warmup_minutes).with_warmup()
                options.check()
            except ValueError as exc:
                print(f"rakshit bench soak: error: {exc}", file=sys.stderr)
                return 2
            result = run_soak(settings, options)
            if args.summary_json:
                args.summary_json.parent.mkdir(parents=True, exist_ok=True)
                args.summary_json.write_text(json.dumps(result, indent=2) + "\n")
            return 0 if result["passed"] else 1
        if args.what == "scoring":
            from streams.bench.pipeline import bench_scoring

            result = bench_scoring(settings)
            print(json.dumps(result, indent=2))
        elif args.what == "lane":
            from streams.bench.lane import bench_lane

            result = bench_lane(settings, args.transactions)
            print(json.dumps(result, indent=2))
        elif args.what == "cost":
            from streams.bench.cost import bench_cost, prices

            try:
                vcpu, gb = prices(args.transactions, args.rounds, args.vcpu_hour_usd,
                                  args.gb_hour_usd)
            except ValueError as exc:
                print(f"rakshit bench cost: error: {exc}", file=sys.stderr)
                return 2
            ensure_broker(settings)
            result = bench_cost(settings, args.transactions, args.rounds, vcpu_hour_usd=vcpu,
                                gb_hour_usd=gb, traffic=args.traffic)
        elif args.what == "state":
            from streams.bench.state import bench_state

            ensure_broker(settings)
            result = bench_state(settings, cards=args.cards)
            print(json.dumps(result, indent=2))
        else:
            # bench_pipeline prints each run as it goes and the table of medians and ratios;
            # every figure is in the JSON summary.
            ensure_broker(settings)
            result = bench_pipeline(settings, args.transactions, args.rounds,
                                    workers=args.workers, traffic=args.traffic)
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    if args.command == "api":
        from confluent_kafka import KafkaException

        from streams.admin import ensure_topics
        from streams.api.server import listen, run_api
        from streams.launcher import StartupFailed

        sock = listen(args.host, args.port)  # first: a taken port ends it at once
        broker_up(settings)
        try:
            # The first request that needs rights on the cluster; run by hand, as the operator.
            ensure_topics(settings)
        except KafkaException as exc:
            raise StartupFailed(f"cannot check or create the topics at "
                                f"{settings.bootstrap_servers}: "
                                f"{exc.args[0] if exc.args else exc}") from exc
        run_api(_service(settings, "api"), args.host, args.port, args.tokens, sock=sock)
        return 0

    if args.command == "demo":
        from streams.demo.run import DemoOptions, run_demo

        summary = run_demo(settings, DemoOptions(
            duration_s=args.duration, rate=args.rate, scenario=args.scenario, seed=args.seed,
            keep_broker=args.keep_broker, speedup=args.speedup, bad_records=args.bad_records,
            outage_start_s=args.outage_start, outage_duration_s=args.outage_duration,
            api_port=args.api_port, hold_s=args.hold))
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        ok = (summary["verdicts"] >= summary["transactions"] == summary["unique_verdicts"]
              and summary["dead_letters"] == summary["bad_records_injected"])
        return 0 if ok else 1

    return 2


def _register_users(settings: Settings, timeout_s: float = 60.0) -> None:
    """Every principal's SCRAM login on the cluster named (docker-compose's Kafka), as the
    broker's principal; returns once the operator's login is accepted."""
    import time

    from infra.kafka.launcher import answers, register_users

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            register_users(settings.bootstrap_servers, settings.credentials_dir)
            if answers(settings.bootstrap_servers, 5.0, settings.kafka_config()):
                return
        except Exception:  # the broker still starting: try again until the deadline
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"{settings.kafka_user}'s login is not accepted at "
                               f"{settings.bootstrap_servers}")
        time.sleep(1.0)


def _service(settings: Settings, service: str) -> Settings:
    """A service command's own principal (streams.launcher.as_service) unless RAKSHIT_KAFKA_USER
    names one: `rakshit worker`, `api`, `simulate` and `replay` run by hand do their set-up as
    the operator, then serve as the worker, the api or a gateway."""
    import os

    from streams.launcher import as_service

    return settings if os.environ.get("RAKSHIT_KAFKA_USER") else as_service(settings, service)


def _gateway(settings: Settings) -> Settings:
    return _service(settings, "gateway")


def broker_up(settings: Settings) -> None:
    """The broker a worker or the API needs: the cluster named, or the embedded one (started
    here when the command is run by hand; a child of the demo, a benchmark or a test joins the
    broker its parent made sure of and starts none). Nothing listening, or no answer, ends the
    command at once with one line (streams.launcher.StartupFailed)."""
    from infra.kafka.launcher import BrokerError
    from streams.broker import ensure_broker
    from streams.launcher import StartupFailed, probe_broker, started_by_parent

    if not settings.embedded or started_by_parent():
        probe_broker(settings)
    try:
        ensure_broker(settings)
    except BrokerError as exc:
        raise StartupFailed(str(exc)) from exc


def tokens_command(settings: Settings, args: argparse.Namespace) -> int:
    """`rakshit tokens`: a token is printed once, when issued; only its hash is kept."""
    from datetime import timedelta

    from streams.api.server import token_store, tokens_path

    store = token_store(settings, args.file)
    where = args.file or tokens_path(settings)
    ttl = timedelta(days=args.ttl_days) if args.ttl_days is not None else None
    if args.action == "list":
        for r in store.records():
            state = "revoked" if r.revoked_at else "live"
            print(f"{r.token_id}  {r.user:<16} {r.role:<8} expires {r.expires_at:%Y-%m-%d %H:%M}"
                  f" UTC  {state}")
        return 0
    if not args.user or (args.action == "issue" and not args.role):
        print(f"tokens {args.action} needs --user" + (" and --role" if args.action == "issue"
                                                      else ""), file=sys.stderr)
        return 2
    try:
        if args.action == "issue":
            token = store.issue(args.user, args.role, ttl) if ttl else store.issue(
                args.user, args.role)
        elif args.action == "rotate":
            token = store.rotate(args.user, ttl)
        else:
            gone = store.revoke(args.user)
            print(f"revoked {len(gone)} token(s) of {args.user} in {where}")
            return 0 if gone else 1
    except (ValueError, LookupError) as exc:
        print(f"tokens {args.action}: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"(shown once; stored hashed in {where}"
          + ("; the old ones are revoked" if args.action == "rotate" else "") + ")",
          file=sys.stderr)
    return 0


def models_command(settings: Settings, action: str, version: str | None, share: float) -> int:
    from scoring.lifecycle import describe
    from streams.worker.chain import registry_for

    registry = registry_for(settings)
    if action != "list" and action != "rollback" and version is None:
        print(f"models {action} needs a VERSION", file=sys.stderr)
        return 2
    if action == "promote":
        registry.promote(str(version))
    elif action == "rollback":
        print(f"champion is now {registry.rollback()}")
    elif action == "challenger":
        registry.set_challenger(version, share)
    elif action == "shadow":
        registry.set_shadow(str(version), True)
        registry.set_challenger(version, 0.0)
    rows = describe(registry)
    if not rows:
        print("no models registered; `rakshit train` makes one")
    for row in rows:
        oot = row["metrics"].get("out_of_time", {})
        figures = " ".join(f"{k}={v:.3f}" for k, v in oot.items())
        print(f"{row['version']:<9} {row['role']:<18} window {row['window']['start'][:10]}.."
              f"{row['window']['end'][:10]} features {row['features']:>3}  {figures}")
    if action != "list":
        print("workers load models at start: restart them to apply")
    return 0


if __name__ == "__main__":
    sys.exit(main())
