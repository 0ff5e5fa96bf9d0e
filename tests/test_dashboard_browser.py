"""The ops dashboard in a real browser: Debian's headless chromium driven by Playwright, against a
real worker, the real API process and the real broker.

Covered: the page loads and takes a token; an injected issuer outage makes a hypothesis and an
experiment appear live; an analyst claims and resolves a case and the override verdict appears;
a viewer cannot resolve (the API's refusal is shown). Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.routing.baseline import write_baseline
from schemas.codec import make_codec
from streams.admin import ensure_topics, free_port
from streams.api.server import ROLE_USERS, issue_token
from streams.config import Settings
from streams.launcher import start_api, stop_process
from streams.topics import Topic
from streams.worker.casework import open_command
from tests.factories import degrading_outcomes
from tests.kafka_helpers import WorkerProcess, name, produce
from tests.test_codec import RECORDS

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
ROUTES = ("acq-a", "acq-b", "acq-c")
BASELINE = {"issuer-9": {"acq-a": 0.8, "acq-b": 0.1, "acq-c": 0.1}}
WAIT_MS = 90_000


@pytest.fixture
def stack(make_settings: Callable[..., Settings],
          tmp_path: Path) -> Iterator[tuple[Settings, str, dict[str, str]]]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium; "
                    "run `apt-get install chromium`")
    settings = make_settings()
    ensure_topics(settings)
    write_baseline(settings.routing_baseline, BASELINE)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    api, url = start_api(settings, free_port())
    tokens = {user: issue_token(settings, role) for role, user in ROLE_USERS.items()}
    try:
        yield settings, url, tokens
    finally:
        stop_process(api)
        worker.stop()


def outage(settings: Settings) -> list[tuple[str, bytes, bytes]]:
    codec, topic = make_codec(None), name(settings, Topic.AUTH_OUTCOMES)
    start = datetime.now(UTC) - timedelta(minutes=10)
    return [(topic, tx["card_token"].encode(),
             codec.encode("authorization_outcome", rec, topic=topic))
            for tx, rec in degrading_outcomes("issuer-9", ROUTES, start)]


def review_case(settings: Settings, n: int) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """A REVIEW verdict on the decision topic and the OPEN command the worker sends for it
    (on its own case-openings topic)."""
    codec = make_codec(None)
    verdict: dict[str, Any] = RECORDS["verdict"]()
    verdict.update(verdict_id=f"v-browser-{n}", transaction_id=f"tx-browser-{n}",
                   decision="REVIEW", is_override=False, overrides_verdict_id=None,
                   decided_by="worker", arm="CHAMPION", guardrails=[])
    decisions, commands = name(settings, Topic.DECISIONS), name(settings, Topic.CASE_OPENINGS)
    raw = codec.encode("verdict", verdict, topic=decisions)
    cmd = codec.encode("case_command", open_command(raw, verdict["transaction_id"],
                                                    datetime.now(UTC)), topic=commands)
    return f"case-{verdict['verdict_id']}", [
        (decisions, verdict["transaction_id"].encode(), raw),
        (commands, verdict["transaction_id"].encode(), cmd)]


def test_the_dashboard_live(stack: tuple[Settings, str, dict[str, str]]) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings, url, tokens = stack
    SHOTS.mkdir(parents=True, exist_ok=True)
    first, first_records = review_case(settings, 1)
    second, second_records = review_case(settings, 2)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.fill("#token-input", tokens["ana-analyst"])
            page.click("#token-save")
            expect(page.locator("#error")).to_be_hidden()
            page.screenshot(path=SHOTS / "1-loaded.png", full_page=True)

            produce(settings, outage(settings))
            expect(page.locator("[data-testid=hypotheses] tr").first).to_contain_text(
                "acq-a", timeout=WAIT_MS)
            expect(page.locator("[data-testid=experiments] tr").first).to_contain_text(
                "issuer-9", timeout=WAIT_MS)
            page.screenshot(path=SHOTS / "2-outage-hypothesis-experiment.png", full_page=True)
            # Two partitions' windows of labelled scores, as their workers publish them (the
            # worker here published its own partitions' empty windows when it took them): the
            # page shows the API's merge (every fraud outscores every genuine payment: AUC 1).
            quality = name(settings, Topic.MODEL_QUALITY)
            codec = make_codec(None)
            produce(settings, [(quality, str(q).encode(), codec.encode("model_quality", {
                **RECORDS["model_quality"](), "partition": q, "scores": [0.9 - q / 10, 0.1],
                "frauds": [True, False], "flagged": [True, False]}, topic=quality))
                for q in (0, 1)])
            expect(page.locator("[data-testid=quality]")).to_contain_text(
                "4 labels, 2 frauds): AUC 1.000, AP 1.000, precision of flags 1.000",
                timeout=WAIT_MS)

            produce(settings, first_records + second_records)
            page.locator(f"[data-testid=claim-{first}]").click(timeout=WAIT_MS)
            expect(page.locator("[data-testid=cases] tr", has_text=first)).to_contain_text(
                "CLAIMED", timeout=WAIT_MS)
            page.locator(f"[data-testid=resolve-{first}]").click()
            page.select_option("#resolve-resolution", "CONFIRMED_FRAUD")
            page.fill("#resolve-reason", "cardholder denies the payment")
            page.click("#resolve-submit")
            override = page.locator("[data-testid=override-v-browser-1]")
            expect(override).to_contain_text("override by ana-analyst", timeout=WAIT_MS)
            page.screenshot(path=SHOTS / "3-case-resolved-override.png", full_page=True)

            viewer = browser.new_page(viewport={"width": 1400, "height": 1000})
            viewer.goto(url)
            viewer.fill("#token-input", tokens["vera-viewer"])
            viewer.click("#token-save")
            viewer.locator(f"[data-testid=resolve-{second}]").click(timeout=WAIT_MS)
            viewer.select_option("#resolve-resolution", "APPROVE")
            viewer.fill("#resolve-reason", "looks fine to me")
            viewer.click("#resolve-submit")
            expect(viewer.locator("#error")).to_be_visible(timeout=WAIT_MS)
            expect(viewer.locator("#error")).to_contain_text("analyst")
            viewer.screenshot(path=SHOTS / "4-viewer-refused.png", full_page=True)
            expect(viewer.locator("[data-testid=cases] tr", has_text=second)).not_to_contain_text(
                "RESOLVED")
        finally:
            browser.close()
