"""Demo data for ``manage.py seed_demo``: a batch of three 5-credit codes to try."""

from __future__ import annotations

import random
from typing import Any

from django.utils.crypto import salted_hmac

from redemption import codes, services
from redemption.models import RedemptionBatch
from wallet import money

DEMO_BATCH = "Demo welcome codes"
DEMO_CODES = 3


def _demo_choice() -> Any:
    # Seeded from this installation's secret: the printed codes stay the same from run to
    # run (their plaintext is not stored), and differ between installations.
    return random.Random(salted_hmac("redemption.demo", DEMO_BATCH).hexdigest()).choice


def redemption_demo_seed(*, staff: Any) -> list[str]:
    """Idempotent: the batch is generated once; returns its codes in plain text."""
    if not RedemptionBatch.objects.filter(name=DEMO_BATCH).exists():
        return services.batch_generate(
            name=DEMO_BATCH,
            credits_micro=money.credits_to_micro("5"),
            code_count=DEMO_CODES,
            credit_validity_days=30,
            actor=staff,
            choice=_demo_choice(),
        ).codes
    choice = _demo_choice()
    return [codes.code_display(codes.code_generate(choice)) for _ in range(DEMO_CODES)]
