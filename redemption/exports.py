"""CSV files staff download from the admin: the codes of a new batch (once, at generation)
and the state of a batch's codes (hints only: the codes themselves are not stored)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from redemption import selectors
from redemption.models import RedemptionBatch
from redemption.services import GeneratedBatch
from wallet import money

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    """Text a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def _csv(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return out.getvalue()


def _expiry(batch: RedemptionBatch) -> str:
    parts = []
    if batch.credit_validity_days:
        parts.append(f"{batch.credit_validity_days} days after redemption")
    if batch.credits_expire_at:
        parts.append(f"at the latest {batch.credits_expire_at.isoformat()}")
    return "; ".join(parts) or "never"


def codes_csv(generated: GeneratedBatch) -> str:
    batch = generated.batch
    return _csv(
        [
            "code",
            "batch_id",
            "batch",
            "credits",
            "uses_per_code",
            "codes_expire_at",
            "credits_expire",
        ],
        (
            [
                code,
                batch.pk,
                batch.name,
                money.format_credits(batch.credits_micro),
                batch.uses_per_code,
                batch.codes_expire_at.isoformat() if batch.codes_expire_at else "",
                _expiry(batch),
            ]
            for code in generated.codes
        ),
    )


def batch_status_csv(batches: Iterable[RedemptionBatch]) -> str:
    """One row per code of each batch: its hint, status, uses and who redeemed it."""

    def rows() -> Iterable[list[object]]:
        for batch in batches:
            codes = selectors.code_list_for_batch(batch=batch).iterator(chunk_size=1000)
            for code in codes:
                redemptions = list(code.redemptions.all())
                last = max((r.created_at for r in redemptions), default=None)
                yield [
                    batch.pk,
                    batch.name,
                    code.display,
                    code.status,
                    code.uses,
                    code.max_uses,
                    "; ".join(r.user.email for r in redemptions),
                    last.isoformat() if last else "",
                ]

    return _csv(
        [
            "batch_id",
            "batch",
            "code",
            "status",
            "uses",
            "max_uses",
            "redeemed_by",
            "last_redeemed_at",
        ],
        rows(),
    )
