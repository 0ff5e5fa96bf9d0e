"""`rakshit bench cost`: what a verdict costs in cloud compute, measured on the real worker.

The pipeline benchmark's worker run (its records, fresh topics, readiness and backlog, from
``streams.bench.pipeline``), with the worker process's own resources read from /proc: CPU
seconds (utime + stime of every thread) from ready to the last verdict, and peak resident memory
(VmHWM). Priced per vCPU-hour and per GB-hour, a verdict costs its CPU seconds plus its share of
the memory the worker holds for the run; the figures are printed beside the founding targets.
Only the worker is counted: the broker, the gateways and the network are not in these figures.

The default prices are AWS Fargate's on-demand rates (Linux/x86, US East, N. Virginia), a
platform billed per vCPU-hour and GB-hour for the container this worker is; ``--vcpu-hour-usd``
and ``--gb-hour-usd`` price it elsewhere.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streams.admin import delete_run_topics, ensure_topics, free_port
from streams.bench.pipeline import RunFailed, backlog_decided, benchmark_records
from streams.config import Settings
from streams.launcher import ChildExited, start_worker, stop_process, wait_until_ready

VCPU_HOUR_USD = 0.04048
GB_HOUR_USD = 0.004445
PRICE_SOURCE = ("AWS Fargate on-demand, Linux/x86, US East (N. Virginia): "
                "aws.amazon.com/fargate/pricing")
# The founding targets: all-in per transaction, and per 1,000 model inferences.
TARGET_PER_TRANSACTION_USD = 0.002
TARGET_PER_1000_INFERENCES_USD = 0.15
GIB = 1024**3


@dataclass(frozen=True)
class Usage:
    """One process's CPU seconds so far and its peak resident memory."""

    cpu_seconds: float
    peak_rss_bytes: int


def process_usage(pid: int) -> Usage:
    """From /proc: utime + stime (every thread's, in clock ticks) and VmHWM."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses; the fields after it are fixed:
    # state is field 3, utime 14 and stime 15.
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return Usage(ticks / os.sysconf("SC_CLK_TCK"), peak)


def measured_run(base: Settings, records: list[tuple[bytes, bytes]], tag: str
                 ) -> dict[str, Any]:
    """One worker on fresh topics decides ``records`` produced as a backlog; its CPU seconds
    from ready to the last verdict, its start-up CPU seconds and its peak RSS."""
    settings = replace(base, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}",
                       metrics_port=free_port())
    ensure_topics(settings)
    proc, log = start_worker(settings, f"{tag}.log")
    try:
        try:
            wait_until_ready(settings, proc)
        except ChildExited:
            raise  # a dead worker ends the benchmark (streams.launcher)
        except RuntimeError as exc:
            raise RunFailed(f"{exc} (log: {log})") from exc
        ready = process_usage(proc.pid)
        wall = backlog_decided(settings, records, [proc], [str(log)])
        done = process_usage(proc.pid)
    finally:
        stop_process(proc)
        delete_run_topics(settings)
    return {"verdicts": len(records), "wall_seconds": round(wall, 3),
            "cpu_seconds": round(done.cpu_seconds - ready.cpu_seconds, 3),
            "cpu_seconds_startup": round(ready.cpu_seconds, 3),
            "peak_rss_mib": round(done.peak_rss_bytes / 2**20, 1)}


def priced(runs: list[dict[str, Any]], vcpu_hour_usd: float, gb_hour_usd: float
           ) -> dict[str, Any]:
    """The runs pooled: CPU seconds and GB-seconds (peak RSS held for each run's wall time) per
    1,000 verdicts, and what they cost at the given prices beside the targets."""
    verdicts = sum(r["verdicts"] for r in runs)
    cpu = sum(r["cpu_seconds"] for r in runs)
    gb_seconds = sum(r["peak_rss_mib"] * 2**20 / GIB * r["wall_seconds"] for r in runs)
    per_tx = (cpu * vcpu_hour_usd + gb_seconds * gb_hour_usd) / 3600 / verdicts
    return {
        "verdicts": verdicts,
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_1000_verdicts": round(cpu / verdicts * 1000, 4),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "gb_seconds_per_1000_verdicts": round(gb_seconds / verdicts * 1000, 4),
        "price": {"vcpu_hour_usd": vcpu_hour_usd, "gb_hour_usd": gb_hour_usd,
                  "source": PRICE_SOURCE if (vcpu_hour_usd, gb_hour_usd) == (
                      VCPU_HOUR_USD, GB_HOUR_USD) else "given on the command line"},
        "cost_per_transaction_usd": per_tx,
        "cost_per_1000_inferences_usd": per_tx * 1000,
        "target_per_transaction_usd": TARGET_PER_TRANSACTION_USD,
        "target_per_1000_inferences_usd": TARGET_PER_1000_INFERENCES_USD,
        "headroom_per_transaction": round(TARGET_PER_TRANSACTION_USD / per_tx, 1),
        "headroom_per_1000_inferences": round(TARGET_PER_1000_INFERENCES_USD / per_tx / 1000, 1),
    }


def prices(transactions: int, rounds: int, vcpu_hour_usd: float | None,
           gb_hour_usd: float | None) -> tuple[float, float]:
    """The (vCPU-hour, GB-hour) prices to use; ValueError naming the option that is wrong."""
    for option, value in (("--transactions", transactions), ("--rounds", rounds)):
        if value < 1:
            raise ValueError(f"{option} must be at least 1, not {value}")
    vcpu = VCPU_HOUR_USD if vcpu_hour_usd is None else vcpu_hour_usd
    gb = GB_HOUR_USD if gb_hour_usd is None else gb_hour_usd
    for option, price_usd in (("--vcpu-hour-usd", vcpu), ("--gb-hour-usd", gb)):
        if not price_usd >= 0:  # NaN too
            raise ValueError(f"{option} must be a price of 0 or more, not {price_usd}")
    return vcpu, gb


def bench_cost(settings: Settings, transactions: int = 20_000, rounds: int = 3, *,
               vcpu_hour_usd: float | None = None, gb_hour_usd: float | None = None,
               traffic: str = "handbook", seed: int = 5) -> dict[str, Any]:
    """``rounds`` measured runs of the worker on ``transactions`` records each, priced."""
    vcpu, gb = prices(transactions, rounds, vcpu_hour_usd, gb_hour_usd)
    records = benchmark_records(settings, transactions, seed, traffic)
    stamp = time.strftime("%H%M%S")
    print(f"cost: {transactions:,} {traffic} transactions per run, {rounds} run(s); the worker "
          "process alone", flush=True)
    runs = []
    for r in range(rounds):
        run = measured_run(settings, records, f"cost{stamp}-{r}")
        runs.append(run)
        print(f"  run {r + 1}/{rounds}: {run['verdicts']:,} verdicts in {run['wall_seconds']:.1f}"
              f" s, {run['cpu_seconds']:.2f} CPU-s, peak RSS {run['peak_rss_mib']:.0f} MiB "
              f"(start-up {run['cpu_seconds_startup']:.1f} CPU-s, not counted)", flush=True)
    result = {"transactions_per_run": transactions, "traffic": traffic, "rounds": rounds,
              "runs": runs, **priced(runs, vcpu, gb)}
    print()
    print(format_cost(result), flush=True)
    return result


def format_cost(result: dict[str, Any]) -> str:
    p = result["price"]
    rows = [("per transaction", result["cost_per_transaction_usd"],
             result["target_per_transaction_usd"], result["headroom_per_transaction"]),
            ("per 1,000 inferences", result["cost_per_1000_inferences_usd"],
             result["target_per_1000_inferences_usd"], result["headroom_per_1000_inferences"])]
    lines = [f"worker CPU: {result['cpu_seconds_per_1000_verdicts']:.3f} CPU-s per 1,000 "
             f"verdicts; memory: peak RSS {result['peak_rss_mib']:.0f} MiB, "
             f"{result['gb_seconds_per_1000_verdicts']:.3f} GB-s per 1,000 verdicts",
             f"price: ${p['vcpu_hour_usd']} per vCPU-hour, ${p['gb_hour_usd']} per GB-hour "
             f"({p['source']})",
             f"{'':<22}{'worker cost':>14}{'target':>10}{'target/cost':>13}"]
    lines += [f"{label:<22}{'$' + format(cost, '.3g'):>14}{'$' + format(target, 'g'):>10}"
              f"{headroom:>12,.0f}x" for label, cost, target, headroom in rows]
    return "\n".join(lines)
