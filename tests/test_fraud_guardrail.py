"""The guardrail agent (agents/fraud/guardrail.py): sanctions matching, structuring, protected
attributes, decline disparity, card data, and failing closed when a check raises."""

from __future__ import annotations

import pytest

from agents.fraud.guardrail import (
    BLOCK,
    DEFAULT_SANCTIONS,
    REVIEW,
    DisparityConfig,
    DisparityMonitor,
    Guardrail,
    SanctionsList,
    StructuringConfig,
    check_card_data,
    normalize_name,
    protected_in,
    record_amount,
    structuring_check,
)
from tests.fraud_helpers import (
    MINUTE_MS,
    NAMES,
    NOW_MS,
    RaisingSanctions,
    in_band_history,
    tx,
)


@pytest.fixture(scope="module")
def sanctions() -> SanctionsList:
    return SanctionsList.from_file()


def test_the_sanctions_file_is_fictitious_and_every_entry_matches_itself(
        sanctions: SanctionsList) -> None:
    assert "FICTITIOUS" in DEFAULT_SANCTIONS.read_text()
    assert len(sanctions.entries) >= 5
    for entry, _ in sanctions.entries:
        hit = sanctions.match(entry)
        assert hit is not None and hit.entry == entry


@pytest.mark.parametrize("name", [
    "ORBITAL QUARTZ TRADING LIMITED",
    "Orbital Quartz Tradng Ltd.",
    "Zébulon Marsh Holdings",
    "Holdings, Zebulon Marsh",
    "Kestrel Vantablack Imports (Mumbai branch)",
])
def test_variants_of_a_listed_name_match(sanctions: SanctionsList, name: str) -> None:
    assert sanctions.match(name) is not None


@pytest.mark.parametrize("name", ["Corner Grocer", "Orbital Pizza", "Marsh Hardware", "", "Ltd"])
def test_other_names_do_not_match(sanctions: SanctionsList, name: str) -> None:
    assert sanctions.match(name) is None


def test_normalisation_drops_accents_case_punctuation_and_legal_forms() -> None:
    assert normalize_name("  Zébulon-MARSH   Holdings GmbH ") == "zebulon marsh holdings"


def test_structuring_counts_near_threshold_amounts_in_the_window() -> None:
    config = StructuringConfig(min_count=3)
    check = structuring_check(in_band_history(2), "now", 9_850.0, "EUR", NOW_MS, config)
    assert not check.passed and check.on_fail == REVIEW and "3 payment(s)" in check.detail
    assert structuring_check(in_band_history(1), "now", 9_850.0, "EUR", NOW_MS, config).passed
    # the same payment replayed is not counted twice
    replay = [*in_band_history(1), (NOW_MS, "now", 9_850.0, "EUR")]
    assert structuring_check(replay, "now", 9_850.0, "EUR", NOW_MS, config).passed
    # outside the window, another currency, or an amount not just under: not counted
    old = in_band_history(2, start_ms=NOW_MS - 25 * 60 * MINUTE_MS)
    assert structuring_check(old, "now", 9_850.0, "EUR", NOW_MS, config).passed
    assert structuring_check(in_band_history(2, "USD"), "now", 9_850.0, "EUR", NOW_MS,
                             config).passed
    assert structuring_check(in_band_history(2), "now", 4_000.0, "EUR", NOW_MS, config).passed


def test_structuring_threshold_is_configurable_and_unknown_currencies_say_so() -> None:
    config = StructuringConfig(thresholds={"EUR": 3_000.0}, min_count=2)
    history = record_amount([], NOW_MS - MINUTE_MS, "a", 2_900.0, "EUR", config)
    assert not structuring_check(history, "b", 2_950.0, "EUR", NOW_MS, config).passed
    unknown = structuring_check(history, "b", 2_950.0, "JPY", NOW_MS, config)
    assert unknown.passed and "not screened" in unknown.detail


def test_amount_state_keeps_only_near_threshold_payments_once_and_within_the_window() -> None:
    config = StructuringConfig()
    history = record_amount([], NOW_MS, "a", 50.0, "EUR", config)
    assert history == []
    history = record_amount(history, NOW_MS, "b", 9_500.0, "EUR", config)
    history = record_amount(history, NOW_MS, "b", 9_500.0, "EUR", config)
    assert [i for _, i, _, _ in history] == ["b"]
    later = NOW_MS + config.window_ms + 1
    history = record_amount(history, later, "c", 9_600.0, "EUR", config)
    assert [i for _, i, _, _ in history] == ["c"]


def test_protected_attributes_match_whole_tokens() -> None:
    features = ["customer_age", "page_views", "genderCode", "amount", "Nationality_match",
                "usage_ratio", "date_of_birth_year"]
    assert protected_in(features, ["age", "gender", "nationality", "date_of_birth"]) == [
        "customer_age", "genderCode", "Nationality_match", "date_of_birth_year"]
    guardrail = Guardrail()
    assert not guardrail.check_model(["amount", "customer_age"]).passed
    assert guardrail.check_model(list(NAMES)).passed
    assert guardrail.allowed_features(["amount", "gender"]) == ["amount"]
    # Reviewed exemptions only: the card's account age passes, the cardholder's age never does.
    assert guardrail.check_model(["amount", "account_age_days"]).passed
    assert not guardrail.check_model(["account_age_days", "cardholder_age"]).passed


def test_decline_disparity_flags_a_segment_declined_far_more_than_the_rest() -> None:
    monitor = DisparityMonitor(DisparityConfig(dimensions=("country",), max_ratio=3.0,
                                               min_count=50, window_ms=60 * MINUTE_MS))
    for i in range(200):
        monitor.record(NOW_MS + i, {"country": "DE"}, declined=i % 50 == 0)   # 2 %
    for i in range(60):
        monitor.record(NOW_MS + i, {"country": "FR"}, declined=i % 3 == 0)    # 33 %
    for i in range(10):
        monitor.record(NOW_MS + i, {"country": "IT"}, declined=True)          # too few
    fr, de, it = (monitor.check({"country": c}) for c in ("FR", "DE", "IT"))
    assert not fr.passed and "country=FR" in fr.detail
    assert de.passed
    assert it.passed and "too few" in it.detail
    # saved and restored (a partition moving to another worker), the window judges the same
    again = DisparityMonitor.from_state(monitor.to_state(), monitor.config)
    assert len(again) == len(monitor) == 270
    assert [again.check({"country": c}) for c in ("FR", "DE", "IT")] == [fr, de, it]
    # an hour later the old decisions have left the window
    for m in (monitor, again):
        m.record(NOW_MS + 61 * MINUTE_MS, {"country": "DE"}, declined=False)
        assert m.check({"country": "FR"}).passed
        assert len(m) == 1


def test_card_numbers_in_verdict_text_are_masked_and_fail_the_check() -> None:
    check, masked = check_card_data(["fine", "seen card 4111 1111 1111 1111 here"])
    assert not check.passed
    assert masked[0] == "fine" and "4111" not in masked[1]
    assert check_card_data(["order 12345"])[0].passed


def test_a_guardrail_that_raises_blocks() -> None:
    outcome = Guardrail(sanctions=RaisingSanctions()).screen(tx(), [], NOW_MS, list(NAMES))
    assert outcome.action == BLOCK and outcome.error == "RuntimeError"
    failed = [c for c in outcome.checks if c.name == "guardrail_error"]
    assert failed and not failed[0].passed and "failing closed" in failed[0].detail
