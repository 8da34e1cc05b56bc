"""Code format, normalisation, keyed-hash storage and batch generation."""

from __future__ import annotations

import re

import pytest
from django.db import connection

from config import crockford
from config.errors import ValidationFailed
from redemption import codes, services
from redemption.errors import CodeNotFound
from redemption.models import RedemptionBatch, RedemptionCode
from tests.helpers import micro
from tests.redemption.conftest import make_batch, redeem

pytestmark = pytest.mark.django_db

GROUPED = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")


def test_codes_have_80_bits_from_an_unambiguous_alphabet_shown_grouped() -> None:
    assert codes.ENTROPY_BITS == 80
    assert len(crockford.ALPHABET) == 32
    assert not set("ILOU") & set(crockford.ALPHABET)
    generated = make_batch(code_count=500).codes
    assert len(set(generated)) == 500
    assert all(GROUPED.match(code) for code in generated), generated[:5]
    # Every character of the alphabet turns up across 500 x 16 random characters.
    assert set("".join(generated).replace("-", "")) == set(crockford.ALPHABET)


@pytest.mark.parametrize(
    "typed",
    [
        "ab12-cd34-ef56-gh78",
        " AB12 CD34 EF56 GH78 ",
        "AB12CD34EF56GH78",
        "ab12\u2013cd34\u2014ef56_gh78",  # en dash, em dash, underscore
        "".join(
            chr(ord(c) + 0xFEE0) if c != "-" else c for c in "AB12-CD34-EF56-GH78"
        ),  # full-width
        "AB12.CD34.EF56.GH78",
    ],
)
def test_input_is_normalised(typed: str) -> None:
    assert codes.code_normalize(typed) == "AB12CD34EF56GH78"


def test_look_alike_characters_map_to_the_digits() -> None:
    assert codes.code_normalize("ABO0-CDI1-EFL1-GH00") == "AB00CD11EF11GH00"
    assert codes.code_normalize("abo0-cdi1-efl1-gh0o") == "AB00CD11EF11GH00"


@pytest.mark.parametrize(
    "typed", ["", "AB12-CD34-EF56", "AB12-CD34-EF56-GH78-JK90", "AB12-CD34-EF56-GHU8", "💳" * 16]
)
def test_input_that_cannot_be_a_code_is_refused(typed: str) -> None:
    assert codes.code_normalize(typed) is None


def test_only_a_keyed_hash_and_a_hint_are_stored(settings) -> None:
    generated = make_batch(code_count=3)
    for plain in generated.codes:
        canonical = plain.replace("-", "")
        stored = RedemptionCode.objects.get(code_hash=codes.code_hash(canonical))
        assert stored.hint == canonical[-4:]
        assert stored.display == "••••-••••-••••-" + canonical[-4:]
        assert len(stored.code_hash) == 64 and canonical not in stored.code_hash
    # No column of any row holds a plaintext code.
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM redemption_redemptioncode")
        dump = repr(cursor.fetchall())
    for plain in generated.codes:
        assert plain.replace("-", "") not in dump and plain not in dump
    # The hash is keyed: another secret gives another hash.
    canonical = generated.codes[0].replace("-", "")
    first = codes.code_hash(canonical)
    settings.REDEMPTION_CODE_SECRET = "another-secret"
    assert codes.code_hash(canonical) != first


def test_codes_still_redeem_after_the_key_is_rotated(settings, user) -> None:
    settings.REDEMPTION_CODE_SECRET = "old-secret"
    [code] = make_batch().codes
    settings.REDEMPTION_CODE_SECRET = "new-secret"
    with pytest.raises(CodeNotFound):
        redeem(user, code)
    settings.REDEMPTION_CODE_PREVIOUS_SECRETS = ["old-secret"]
    assert redeem(user, code).redemption.credits_micro == micro("5")


def test_demo_choice_gives_the_same_codes_each_time() -> None:
    import random

    first = make_batch(code_count=2, choice=random.Random("seed").choice).codes
    assert [codes.code_display(codes.code_generate(random.Random("seed").choice))] == first[:1]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "  "}, "name"),
        ({"code_count": 0}, "number of codes"),
        ({"code_count": 10_001}, "number of codes"),
        ({"uses_per_code": 0}, "uses per code"),
        ({"uses_per_account": 0}, "uses per account"),
        ({"allowed_countries": "US, Germany"}, "allowed_countries"),
        ({"new_accounts_within_days": -1}, "new account period"),
    ],
)
def test_invalid_batches_are_refused_and_nothing_is_stored(overrides, field) -> None:
    with pytest.raises(ValidationFailed) as refused:
        make_batch(**overrides)
    assert refused.value.detail["field"] == field
    assert not RedemptionBatch.objects.exists()
    assert not RedemptionCode.objects.exists()


def test_zero_credits_and_past_expiries_are_refused() -> None:
    from django.utils import timezone

    from wallet.errors import InvalidAmount

    with pytest.raises(InvalidAmount):
        make_batch(credits_micro=0)
    past = timezone.now()
    with pytest.raises(ValidationFailed):
        make_batch(codes_expire_at=past)
    with pytest.raises(ValidationFailed):
        make_batch(credits_expire_at=past)
    assert not RedemptionBatch.objects.exists()


def test_countries_are_normalised() -> None:
    batch = make_batch(allowed_countries=" us,de , US").batch
    assert batch.allowed_countries == "DE,US"
    assert batch.country_list == ["DE", "US"]


def test_a_code_is_found_for_support_by_what_the_customer_reads_out() -> None:
    [code] = make_batch().codes
    found = services.code_find(text=code.lower().replace("-", " "))
    assert found is not None and found.hint == code[-4:]
    assert services.code_find(text="0000-0000-0000-0000") is None
    assert services.code_find(text="nonsense") is None
