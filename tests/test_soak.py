"""`rakshit bench soak`: the judging of memory growth and lag on made-up samples, the /proc
reading on this process, and the real command, briefly, through the broker."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.bench import soak
from streams.bench.soak import Sample
from streams.cli import main
from streams.config import Settings


def sample(t_s: float, worker: float = 400.0, api: float = 300.0, lag: int = 0,
           traffic: bool = True) -> Sample:
    return Sample(t_s=t_s, worker_rss_mib=worker, api_rss_mib=api, worker_cpu_s=t_s / 2,
                  api_cpu_s=t_s / 4, produced=int(t_s * 100), verdicts=int(t_s * 100),
                  lag_transactions=lag, lag_scoring=lag // 2, lag_api_decisions=0,
                  latency_p50_ms=5.0, latency_p99_ms=20.0, traffic=traffic)


def test_memory_growth_compares_the_minute_after_warm_up_with_the_last_minute() -> None:
    # Warm-up (0-300 s) climbs from 200 MiB; then 400 flat, ending at 430 (worker) and 300
    # flat (API); a spike inside warm-up does not count.
    samples = [sample(t, worker=200 + t, api=900 if t == 100 else 300) for t in range(10, 300, 10)]
    samples += [sample(t, worker=400 + (30 if t > 840 else 0)) for t in range(300, 910, 10)]
    growth = soak.memory_growth(samples, warmup_s=300)
    assert growth["worker"] == {"rss_mib_after_warmup": 400.0, "rss_mib_end": 430.0,
                                "growth_pct": 7.5}
    assert growth["api"]["growth_pct"] == 0.0
    lag = soak.lag_bounded(samples, warmup_s=300, rate=100)
    assert soak.targets(growth, lag, lost=0) == {
        "memory_growth_under_10pct": True, "lag_bounded": True, "lost_zero": True}
    leaking = samples[:-6] + [sample(t, worker=450) for t in range(850, 910, 10)]
    assert soak.memory_growth(leaking, 300)["worker"]["growth_pct"] == 12.5
    assert not soak.targets(soak.memory_growth(leaking, 300), lag, 0)[
        "memory_growth_under_10pct"]
    assert not soak.targets(growth, lag, lost=1)["lost_zero"]


def test_lag_is_bounded_when_the_second_half_is_no_worse_than_the_first() -> None:
    rate = 100.0
    # Noise within a commit interval's worth never fails a run (the floor: 5 s of traffic).
    steady = [sample(t, lag=50 + (t % 30)) for t in range(60, 600, 10)]
    assert soak.lag_bounded(steady, warmup_s=60, rate=rate)["bounded"]
    # A backlog that keeps growing: the second half's worst is far above the first half's.
    growing = [sample(t, lag=t * 10) for t in range(60, 600, 10)]
    result = soak.lag_bounded(growing, warmup_s=60, rate=rate)
    assert not result["bounded"] and not result["transactions"]["bounded"]
    assert result["transactions"]["max"] == 5900 and result["transactions"]["max_s"] == 59.0
    # A high but flat lag: within the ratio, yet above the 30 s cap.
    flat_high = [sample(t, lag=4000) for t in range(60, 600, 10)]
    assert not soak.lag_bounded(flat_high, warmup_s=60, rate=rate)["bounded"]
    # Samples taken after the traffic (the drain) are not judged.
    drained = [*steady, sample(700, lag=10_000, traffic=False)]
    assert soak.lag_bounded(drained, warmup_s=60, rate=rate)["bounded"]
    # Nor is the one taken as the producer stops: reported in the worst, not judged.
    stopping = [*steady, sample(600, lag=1_000)]
    assert not soak.lag_bounded(stopping, warmup_s=60, rate=rate)["bounded"]
    judged = soak.lag_bounded(stopping, warmup_s=60, rate=rate, steady_until_s=595)
    assert judged["bounded"] and judged["transactions"]["max_second_half"] == 70


def test_the_warm_up_lasts_until_the_state_is_at_its_steady_size() -> None:
    """The scored-transaction memory fills, and the first cards reach their 90 days."""
    assert soak.SoakOptions(rate=300).settle_minutes() == 16.0  # cards: 90 days at 8,640x
    assert soak.SoakOptions(rate=100, speedup=86_400).settle_minutes() == round(
        soak.MEMORY / 100 / 60 + 1, 1)  # the memory: 200,000 at 100 tx/s
    assert soak.SoakOptions(rate=300).with_warmup().warmup_minutes == 16.0
    assert soak.SoakOptions(warmup_minutes=3).with_warmup().warmup_minutes == 3


def test_per_minute_rows_and_rss_of_this_process() -> None:
    rows = soak.per_minute([sample(t) for t in range(10, 130, 10)], warmup_s=60)
    assert [r["minute"] for r in rows] == [1, 2, 3]
    assert rows[0]["warmup"] and not rows[1]["warmup"]
    assert rows[1]["produced_tps"] == pytest.approx(100.0)
    assert rows[1]["worker_cpu_pct"] == pytest.approx(50.0)
    assert 10 * 2**20 < soak.tree_rss_bytes(os.getpid()) < 16 * 2**30


@pytest.mark.parametrize(("args", "option"), [
    (["--minutes", "0"], "--minutes"),
    (["--rate", "-5"], "--rate"),
    (["--minutes", "2", "--warmup-minutes", "2"], "--warmup-minutes"),
])
def test_bad_options_are_refused_naming_them_before_kafka_is_touched(
        args: list[str], option: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nothing answers there
    assert main(["bench", "soak", *args]) == 2
    assert capsys.readouterr().err.startswith(f"rakshit bench soak: error: {option} must be")


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_soak_runs_the_pipeline_and_accounts_for_every_transaction(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in make_settings().to_env().items():
        monkeypatch.setenv(name, value)
    summary = tmp_path / "soak.json"
    code = main(["bench", "soak", "--minutes", "1", "--warmup-minutes", "0.25", "--rate", "50",
                 "--summary-json", str(summary)])
    out = capsys.readouterr().out
    assert code in (0, 1)  # the targets are judged on minutes, not on this one
    result = json.loads(summary.read_text())
    assert {"rate_requested_tps", "rate_achieved_tps", "rate_reached", "transactions_acked",
            "verdicts", "lost", "latency_ms", "memory", "lag", "lag_at_end", "targets",
            "passed", "minutes", "samples"} <= set(result)
    assert result["transactions_acked"] > 0
    assert result["lost"] == 0 and result["verdicts"] == result["transactions_acked"]
    during = [s for s in result["samples"] if s["traffic"]]
    assert len(during) >= 3
    assert all(s["worker_rss_mib"] > 50 and s["api_rss_mib"] > 50 for s in result["samples"])
    assert result["memory"]["worker"]["growth_pct"] is not None
    assert result["memory"]["api"]["growth_pct"] is not None
    assert set(result["targets"]) == {"memory_growth_under_10pct", "lag_bounded", "lost_zero"}
    assert result["targets"]["lost_zero"]
    assert "targets: memory growth < 10%" in out and "lost 0: PASS" in out
