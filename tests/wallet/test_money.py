from decimal import Decimal

import pytest

from wallet import money
from wallet.errors import InvalidAmount


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("1", 1_000_000),
        ("0.000001", 1),
        ("12.5", 12_500_000),
        (3, 3_000_000),
        (Decimal("2.25"), 2_250_000),
        ("1,000", 1_000_000_000),
    ],
)
def test_credits_to_micro_is_exact(value: object, micro: int) -> None:
    assert money.credits_to_micro(value) == micro


@pytest.mark.parametrize(
    "value", ["0.0000001", "abc", "", "NaN", "Infinity", 1.5, True, "-1", "0", "1e30"]
)
def test_credits_to_micro_refuses_bad_input(value: object) -> None:
    with pytest.raises(InvalidAmount) as error:
        money.credits_to_micro(value)
    assert error.value.code == "invalid_amount"


@pytest.mark.parametrize("value", [1.0, Decimal("1"), "1", None, True, 0, -5, 10**16])
def test_validate_micro_accepts_only_positive_ints_within_bounds(value: object) -> None:
    with pytest.raises(InvalidAmount):
        money.validate_micro(value)


def test_validate_micro_allows_zero_only_when_asked() -> None:
    assert money.validate_micro(0, allow_zero=True) == 0
    assert money.validate_micro(10**15) == 10**15


def test_round_micro_rounds_fractions_up_and_nothing_else() -> None:
    assert money.round_micro(Decimal("1.000000001")) == 2
    assert money.round_micro(Decimal("1")) == 1
    assert money.round_micro(Decimal("0.1")) == 1
    assert money.round_micro(Decimal("0")) == 0


def test_usd_to_micro_uses_credits_per_usd(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CREDITS_PER_USD = Decimal("1")
    assert money.usd_to_micro(Decimal("0.10")) == 100_000
    settings.CREDITS_PER_USD = Decimal("1000")
    assert money.usd_to_micro(Decimal("0.10")) == 100_000_000
    assert money.usd_to_micro(Decimal("0.10"), rate=Decimal("0.3")) == 30_000_000
    assert money.micro_to_usd(100_000_000) == Decimal("0.1")


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.00"),
        (1, "0.000001"),
        (1_500_000, "1.50"),
        (1_234_567_890_000, "1,234,567.89"),
        (123_456, "0.123456"),
    ],
)
def test_format_credits(micro: int, text: str) -> None:
    assert money.format_credits(micro) == text
