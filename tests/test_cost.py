"""`rakshit bench cost`: the worker's CPU seconds and peak memory read from /proc, priced per
vCPU-hour and GB-hour beside the founding targets; end to end through the broker with a tiny
backlog, and the reading and the arithmetic on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.bench import cost
from streams.cli import main
from streams.config import Settings

# A process that burns CPU, then holds 64 MiB touched, then waits to be read.
BURNER = """
import sys, time
end = time.process_time() + 0.4
while time.process_time() < end:
    pass
block = bytearray(64 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def test_process_usage_reads_cpu_seconds_and_peak_rss_of_another_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        usage = cost.process_usage(proc.pid)
    finally:
        proc.communicate("")
    assert 0.35 <= usage.cpu_seconds < 5
    assert 64 * 2**20 <= usage.peak_rss_bytes < 1024 * 2**20


def test_process_usage_counts_every_thread_of_the_process() -> None:
    before = cost.process_usage(os.getpid())

    def burn() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    thread = threading.Thread(target=burn)
    thread.start()
    thread.join()
    after = cost.process_usage(os.getpid())
    assert after.cpu_seconds - before.cpu_seconds >= 0.25


def test_a_verdict_costs_its_cpu_seconds_and_its_share_of_the_memory_held() -> None:
    runs = [{"verdicts": 1000, "wall_seconds": 2.0, "cpu_seconds": 1.5, "peak_rss_mib": 512.0},
            {"verdicts": 3000, "wall_seconds": 4.0, "cpu_seconds": 2.5, "peak_rss_mib": 1024.0}]
    result = cost.priced(runs, vcpu_hour_usd=3.6, gb_hour_usd=0.36)
    assert result["verdicts"] == 4000 and result["cpu_seconds"] == 4.0
    assert result["cpu_seconds_per_1000_verdicts"] == 1.0
    assert result["peak_rss_mib"] == 1024.0
    gb_seconds = 0.5 * 2.0 + 1.0 * 4.0
    assert result["gb_seconds_per_1000_verdicts"] == pytest.approx(gb_seconds / 4)
    per_tx = (4.0 * 3.6 + gb_seconds * 0.36) / 3600 / 4000
    assert result["cost_per_transaction_usd"] == pytest.approx(per_tx)
    assert result["cost_per_1000_inferences_usd"] == pytest.approx(per_tx * 1000)
    assert result["headroom_per_transaction"] == round(0.002 / per_tx, 1)
    assert result["headroom_per_1000_inferences"] == round(0.15 / (per_tx * 1000), 1)
    assert result["price"]["source"] == "given on the command line"
    assert cost.priced(runs, cost.VCPU_HOUR_USD, cost.GB_HOUR_USD)["price"]["source"] == (
        cost.PRICE_SOURCE)


@pytest.mark.parametrize(("args", "option"), [
    (["--rounds", "0"], "--rounds"),
    (["--transactions", "0"], "--transactions"),
    (["--vcpu-hour-usd", "-0.01"], "--vcpu-hour-usd"),
    (["--gb-hour-usd", "nan"], "--gb-hour-usd"),
])
def test_bad_options_are_refused_naming_them_before_kafka_is_touched(
        args: list[str], option: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nothing answers there
    assert main(["bench", "cost", *args]) == 2
    assert capsys.readouterr().err.startswith(f"rakshit bench cost: error: {option} must be")


@pytest.mark.kafka
def test_bench_cost_measures_the_worker_through_the_broker(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in make_settings().to_env().items():
        monkeypatch.setenv(name, value)
    summary = tmp_path / "cost.json"
    code = main(["bench", "cost", "--transactions", "400", "--rounds", "1",
                 "--traffic", "simulator", "--summary-json", str(summary)])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(summary.read_text())
    assert set(result) == {
        "transactions_per_run", "traffic", "rounds", "runs", "verdicts", "cpu_seconds",
        "cpu_seconds_per_1000_verdicts", "peak_rss_mib", "gb_seconds_per_1000_verdicts",
        "price", "cost_per_transaction_usd", "cost_per_1000_inferences_usd",
        "target_per_transaction_usd", "target_per_1000_inferences_usd",
        "headroom_per_transaction", "headroom_per_1000_inferences"}
    [run] = result["runs"]
    assert run["verdicts"] == result["verdicts"] == 400
    assert run["cpu_seconds"] == result["cpu_seconds"] > 0
    assert run["cpu_seconds_startup"] > 0 and run["wall_seconds"] > 0
    # A worker with Faust, LightGBM and river loaded holds well over 50 MiB.
    assert 50 < result["peak_rss_mib"] < 8192
    assert result["price"] == {"vcpu_hour_usd": cost.VCPU_HOUR_USD,
                               "gb_hour_usd": cost.GB_HOUR_USD, "source": cost.PRICE_SOURCE}
    assert 0 < result["cost_per_transaction_usd"] < result["target_per_transaction_usd"]
    assert result["cost_per_1000_inferences_usd"] == pytest.approx(
        1000 * result["cost_per_transaction_usd"])
    assert "per 1,000 inferences" in out and "$0.15" in out and "$0.002" in out
