"""Demo data for metering (called by ``manage.py seed_demo``; safe to run again): a price
catalog from economy to frontier models, billing tiers and token groups, a demo API token
and a few usage records."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, Organization, TokenGroup, User
from usage import pricing, services
from usage.models import ModelPrice, UsageRecord

CHAT, EMBEDDING, IMAGE, AUDIO = (
    ModelPrice.Category.CHAT,
    ModelPrice.Category.EMBEDDING,
    ModelPrice.Category.IMAGE,
    ModelPrice.Category.AUDIO,
)

# (model, display name, provider, category, input, cached input, output, reasoning,
#  request fee, unit price, unit, max output tokens). Token prices are USD per 1M tokens.
CATALOG: list[tuple[Any, ...]] = [
    ("gemini-2.0-flash", "Gemini 2.0 Flash", "Google", CHAT,
     "0.10", "0.025", "0.40", None, "0", "0", "", 8192),
    ("gpt-4o-mini", "GPT-4o mini", "OpenAI", CHAT,
     "0.15", "0.075", "0.60", None, "0", "0", "", 16384),
    ("gpt-4.1-mini", "GPT-4.1 mini", "OpenAI", CHAT,
     "0.40", "0.10", "1.60", None, "0", "0", "", 32768),
    ("claude-3-5-haiku", "Claude 3.5 Haiku", "Anthropic", CHAT,
     "0.80", "0.08", "4.00", None, "0", "0", "", 8192),
    ("deepseek-r1", "DeepSeek R1", "DeepSeek", CHAT,
     "0.55", "0.14", "2.19", "2.19", "0", "0", "", 32768),
    ("o3-mini", "o3-mini", "OpenAI", CHAT,
     "1.10", "0.55", "4.40", "4.40", "0", "0", "", 100000),
    ("gemini-2.5-pro", "Gemini 2.5 Pro", "Google", CHAT,
     "1.25", "0.31", "10.00", "10.00", "0", "0", "", 65536),
    ("gpt-4.1", "GPT-4.1", "OpenAI", CHAT,
     "2.00", "0.50", "8.00", None, "0", "0", "", 32768),
    ("gpt-4o", "GPT-4o", "OpenAI", CHAT,
     "2.50", "1.25", "10.00", None, "0", "0", "", 16384),
    ("claude-sonnet-4", "Claude Sonnet 4", "Anthropic", CHAT,
     "3.00", "0.30", "15.00", "15.00", "0", "0", "", 64000),
    ("sonar-pro", "Sonar Pro (web search)", "Perplexity", CHAT,
     "3.00", None, "15.00", None, "0.005", "0", "", 8192),
    ("o1", "o1", "OpenAI", CHAT,
     "15.00", "7.50", "60.00", "60.00", "0", "0", "", 100000),
    ("claude-opus-4", "Claude Opus 4", "Anthropic", CHAT,
     "15.00", "1.50", "75.00", "75.00", "0", "0", "", 32000),
    ("text-embedding-3-small", "Embeddings v3 small", "OpenAI", EMBEDDING,
     "0.02", None, "0", None, "0", "0", "", None),
    ("gpt-image-1", "GPT Image 1 (1024x1024)", "OpenAI", IMAGE,
     "5.00", None, "0", None, "0", "0.04", "image", None),
    ("whisper-1", "Whisper (transcription)", "OpenAI", AUDIO,
     "0", None, "0", None, "0", "0.006", "minute", None),
]  # fmt: skip

TIERS = [("partner", "0.3", "Partners: 70% off list"), ("standard", "1.0", "List price"),
         ("priority", "1.5", "Priority capacity")]  # fmt: skip
GROUPS = [
    ("default", "standard", [], True, "Every model at the standard rate"),
    ("partner", "partner", [], False, "Every model at the partner rate"),
    ("priority", "priority", [], False, "Every model at the priority rate"),
    ("economy", "standard", ["*-mini", "gemini-2.0-flash", "claude-3-5-haiku",
                             "text-embedding-*"], False, "Economy models only"),
]  # fmt: skip


def seed_catalog() -> int:
    """Add any catalog model that has no price yet; returns how many were added."""
    have = set(ModelPrice.objects.values_list("model", flat=True))
    added = 0
    start = timezone.now() - dt.timedelta(seconds=1)
    for row in CATALOG:
        model, name, provider, category, inp, cached, out, reasoning, fee, unit, unit_name, cap = (
            row
        )
        if model in have:
            continue
        services.model_price_create(
            model=model,
            display_name=name,
            provider=provider,
            category=category,
            input_usd_per_mtok=inp,
            cached_input_usd_per_mtok=cached,
            output_usd_per_mtok=out,
            reasoning_usd_per_mtok=reasoning,
            request_usd=fee,
            unit_usd=unit,
            unit_name=unit_name,
            max_output_tokens=cap,
            effective_from=start,
            now=start,
        )
        added += 1
    return added


def seed_groups() -> None:
    tiers = {
        name: account_services.billing_tier_create(name=name, rate=rate, description=text)
        for name, rate, text in TIERS
    }
    for name, tier, models, default, text in GROUPS:
        if TokenGroup.objects.filter(name=name, tier=tiers[tier]).exists():
            continue
        account_services.token_group_create(
            name=name, tier=tiers[tier], allowed_models=models, is_default=default, description=text
        )


_DEMO_USAGE = [
    ("gpt-4o-mini", 1200, 900, 350, 0, "0"),
    ("gpt-4o", 5400, 0, 820, 0, "0"),
    ("claude-sonnet-4", 15000, 12000, 1400, 600, "0"),
    ("o3-mini", 800, 0, 300, 2500, "0"),
    ("text-embedding-3-small", 24000, 0, 0, 0, "0"),
    ("gpt-image-1", 60, 0, 0, 0, "2"),
    ("whisper-1", 0, 0, 0, 0, "3.5"),
    ("sonar-pro", 900, 0, 450, 0, "0"),
]


def seed_usage(token: ApiToken) -> None:
    for number, (model, inp, cached, out, reasoning, units) in enumerate(_DEMO_USAGE):
        if UsageRecord.objects.filter(token=token, request_id=f"demo-{number}").exists():
            continue
        services.usage_record_create_oneshot(
            token=token,
            model=model,
            request_id=f"demo-{number}",
            endpoint="chat.completions",
            report=services.UsageReport(
                usage=pricing.Usage(
                    input_tokens=inp,
                    cached_input_tokens=cached,
                    output_tokens=out,
                    reasoning_tokens=reasoning,
                    task_units=Decimal(units),
                ),
                latency_ms=400 + 150 * number,
                metadata={"region": "us-east", "retries": 0},
            ),
        )


def seed(*, user: User, organization: Organization) -> dict[str, str]:
    """Seed everything; returns the secrets of tokens created by this run (by name)."""
    seed_groups()
    seed_catalog()
    secrets: dict[str, str] = {}
    token = ApiToken.objects.filter(user=user, name="Demo gateway").first()
    if token is None:
        token, secrets["Demo gateway"] = account_services.api_token_create(
            user=user,
            name="Demo gateway",
            scopes=[ApiToken.Scope.INFERENCE, ApiToken.Scope.METERING, ApiToken.Scope.READ],
        )
    if not ApiToken.objects.filter(user=user, name="Demo team token").exists():
        _, secrets["Demo team token"] = account_services.api_token_create(
            user=user,
            name="Demo team token",
            scopes=[ApiToken.Scope.METERING, ApiToken.Scope.READ],
            organization=organization,
            quota_credits="50",
        )
    seed_usage(token)
    return secrets
