"""What the spend controls cost on the metering path, through ``usage.services``.

    flock /tmp/credits-bench.lock .venv/bin/python bench/spend_controls.py [--pairs 2000]

Creates a scratch PostgreSQL database (dropped and re-created), seeds one funded wallet
and one token per variant, then runs authorize + capture pairs in one thread, round-robin
over the variants in interleaved rounds (so a busy moment hits them all alike), and prints
pairs per second per variant:

  plain      no quota, no budget, no rate limit (the existing fast path)
  budget     a daily budget (token row locked, in-flight sum, budget count on capture)
  limits     requests and tokens per minute (one Redis script call per authorization)
  all        budget + limits + content logging with a 2 KB prompt and answer

It ends with ``wallet_verify``, which must be clean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="per variant")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_i9_bench"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()

    name = urlparse(args.database_url).path.lstrip("/")
    admin = args.database_url.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(
        ["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=True
    )
    subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DATABASE_URL=args.database_url,
        REDIS_URL=args.redis_url,
        CACHE_KEY_PREFIX="bench-spend",
        METERING_MIN_BALANCE_CREDITS="0.1",
        DJANGO_DEBUG="false",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    run(args.pairs, args.rounds)


def run(pairs: int, rounds: int) -> None:
    from accounts import services as account_services
    from accounts.models import ApiToken
    from usage import pricing, services
    from wallet import money
    from wallet import services as wallet_services
    from wallet.models import Wallet
    from wallet.verify import wallet_verify

    services.model_price_create(
        model="bench-chat", display_name="Bench", provider="Bench", output_usd_per_mtok="10"
    )
    user = account_services.user_create(email="bench@example.com", password="bench-pass-123")
    wallet = Wallet.objects.get(user=user)
    wallet_services.wallet_credit(
        wallet=wallet,
        amount=money.credits_to_micro("100000"),
        category="paid",
        idempotency_key="bench-fund",
        reference=wallet_services.Ref("bench", "fund"),
    )
    big = 10**9
    options: dict[str, dict[str, Any]] = {
        "plain": {},
        "budget": {"budget_period": "daily", "budget_credits": "100000"},
        "limits": {"rate_limit_rpm": big, "rate_limit_tpm": big},
        "all": {
            "budget_period": "daily",
            "budget_credits": "100000",
            "rate_limit_rpm": big,
            "rate_limit_tpm": big,
            "log_content": True,
        },
    }
    tokens = {}
    for variant, extra in options.items():
        token, _ = account_services.api_token_create(
            user=user, name=variant, scopes=["metering"], **extra
        )
        tokens[variant] = ApiToken.objects.select_related("group__tier", "membership").get(
            pk=token.pk
        )
    prompt = [{"role": "user", "content": "x" * 2048}]
    content = services.ContentLog.from_chat(messages=prompt, response="y" * 2048)
    report = services.UsageReport(usage=pricing.Usage(input_tokens=512, output_tokens=100))
    elapsed = dict.fromkeys(options, 0.0)
    per_round = max(pairs // rounds, 1)
    for round_ in range(rounds):
        for variant, token in tokens.items():
            logged = content if variant == "all" else None
            started = time.perf_counter()
            for i in range(per_round):
                result = services.authorization_create(
                    token=token,
                    model="bench-chat",
                    messages=prompt,
                    max_tokens=100,
                    request_id=f"{variant}-{round_}-{i}",
                )
                services.authorization_capture(
                    authorization=result.authorization, report=report, content=logged
                )
            elapsed[variant] += time.perf_counter() - started
    base = per_round * rounds / elapsed["plain"]
    print(f"{'variant':<8} {'pairs/s':>9} {'vs plain':>9}")
    for variant, seconds in elapsed.items():
        rate = per_round * rounds / seconds
        print(f"{variant:<8} {rate:>9.0f} {rate / base - 1:>+9.1%}")
    violations = wallet_verify()
    print("wallet_verify:", violations or "clean")


if __name__ == "__main__":
    main()
