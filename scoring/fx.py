"""Reference exchange rates, so amount features compare like with like.

A model that reads 5,000 INR as 5,000 EUR flags half of India. Every amount feature is computed on
the amount in euros (the handbook data's currency, so its features are unchanged). These are
fixed reference rates, euros per unit, good enough to put amounts on one scale for risk features;
a deployment that needs accounting accuracy feeds its treasury's daily rates here instead. An
unknown currency is an error the caller must handle, never silently rate 1.
"""

from __future__ import annotations

from decimal import Decimal

EUR_PER_UNIT: dict[str, float] = {
    "EUR": 1.0,
    "USD": 0.92,
    "GBP": 1.15,
    "INR": 0.011,
    "SGD": 0.68,
    "AED": 0.25,
    "BRL": 0.184,
    "JPY": 0.0062,
    "CHF": 1.04,
}


class UnknownCurrency(ValueError):
    pass


def to_eur(amount: Decimal | float, currency: str) -> float:
    try:
        return float(amount) * EUR_PER_UNIT[currency]
    except KeyError:
        raise UnknownCurrency(f"no reference rate for {currency!r}") from None
