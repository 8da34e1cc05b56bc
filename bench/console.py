"""Server time of the console's wallet and usage-records pages for a user with 1,000,000
usage records.

    flock /tmp/credits-bench.lock .venv/bin/python bench/console.py [--rows 1000000]

Creates a scratch PostgreSQL database (dropped and re-created), migrates it, creates one
user with two API tokens and three models, and loads ``--rows`` usage records with
``generate_series`` spread evenly over the last ``--days`` days up to now (so today holds
its share, read live). It then:

  (1) times both pages once with nothing rolled up (every figure read from the records),
  (2) runs the daily rollup (``usage_rollup_catch_up``) and times it, twice (idempotent),
  (3) measures ``--requests`` GETs of each page through Django's test client, in process
      (``config.settings.local`` with DEBUG off): p50 / p99 of the server time, and the
      number of SQL statements per page.

Target (issue 7): p50 under 150 ms for each page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.metering import psql, recreate_database  # noqa: E402

MODELS = ("bench-chat", "bench-reasoner", "bench-mini")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--requests", type=int, default=40, help="timed GETs per page")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_i7_bench"
    )
    return parser.parse_args()


def seed() -> dict[str, Any]:
    from django.core.management import call_command

    from accounts import services as account_services
    from tests.helpers import credit
    from usage import services
    from wallet.models import Wallet

    call_command("migrate", verbosity=0)
    prices = [
        services.model_price_create(
            model=model,
            display_name=model,
            provider="Bench",
            input_usd_per_mtok="2.50",
            cached_input_usd_per_mtok="1.25",
            output_usd_per_mtok="10",
        )
        for model in MODELS
    ]
    user = account_services.user_create(email="console-bench@example.com", password="bench-pw-1")
    credit(Wallet.objects.get(user=user), "500")
    tokens = [
        account_services.api_token_create(user=user, name=f"bench {n}", scopes=["metering"])[0]
        for n in (1, 2)
    ]
    return {"user": user, "prices": prices, "tokens": tokens}


def insert_usage_rows(url: str, seeded: dict[str, Any], rows: int, days: int) -> None:
    user = seeded["user"]
    wallet_id = seeded["tokens"][0].wallet_id
    token_ids = [t.pk for t in seeded["tokens"]]
    price_ids = [p.pk for p in seeded["prices"]]
    step = days * 86400.0 / rows
    psql(
        url,
        f"""
        INSERT INTO usage_usagerecord (
            request_id, wallet_id, user_id, token_id, token_group_id, price_id, model,
            endpoint, status, error, started_at, finished_at, latency_ms, input_tokens,
            output_tokens, cached_input_tokens, reasoning_tokens, task_units, unit_name,
            input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok,
            reasoning_usd_per_mtok, request_usd, unit_usd, markup, tier_rate,
            credits_per_usd, usd_cost, cost_micro, charged_micro, shortfall_micro,
            estimated, metadata, body_hash, created_at)
        SELECT 'bench-' || g, {wallet_id}, {user.pk},
            (ARRAY{token_ids})[1 + g % 2],
            (SELECT id FROM accounts_tokengroup WHERE is_default),
            (ARRAY{price_ids})[1 + g % 3],
            (ARRAY['{MODELS[0]}', '{MODELS[1]}', '{MODELS[2]}'])[1 + g % 3], 'chat.completions',
            CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
            CASE WHEN g % 50 = 0 THEN 'upstream timeout' ELSE '' END,
            t - interval '900 milliseconds', t, 900, 1000 + g % 900, 200 + g % 300,
            g % 500, 0, 0, '', 2.5, 10, 1.25, 10, 0, 0, 1, 1, 1,
            ((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)
                / 1000000.0,
            ceil(((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)),
            ceil(((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)),
            0, false, '{{}}', md5(g::text), t
        FROM generate_series(0, {rows - 1}) AS g,
             LATERAL (SELECT now() - ({rows - 1} - g) * interval '{step} seconds' AS t) AS ts
        """,
    )
    psql(url, "VACUUM ANALYZE usage_usagerecord")


def timed(client: Any, path: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return samples


def describe(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):7.1f} ms  p99 {p99:7.1f} ms  (n={len(ordered)})"


def main() -> None:
    args = parse_args()
    recreate_database(args.database_url)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import warnings

    import django

    # No collected static files in a checkout; the pages' HTML is what is timed.
    warnings.filterwarnings("ignore", message="No directory at")
    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from usage import rollups

    started = time.perf_counter()
    seeded = seed()
    insert_usage_rows(args.database_url, seeded, args.rows, args.days)
    print(
        f"Loaded {args.rows:,} usage records over {args.days} days "
        f"in {time.perf_counter() - started:.1f} s"
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(seeded["user"])
    pages = {"wallet": "/", "usage records": "/console/usage/"}
    print("\nWith nothing rolled up (all read from the records):")
    for name, path in pages.items():
        print(f"  {name:14s} {describe(timed(client, path, 3))}")

    start = time.perf_counter()
    days = rollups.usage_rollup_catch_up()
    print(f"\nRollup of {len(days)} days: {time.perf_counter() - start:.1f} s", end="")
    start = time.perf_counter()
    rollups.usage_rollup_days(days=days[-7:])
    print(f"; recomputing the last 7 days again: {time.perf_counter() - start:.1f} s")

    print(f"\nWith rollups (today read live), {args.requests} GETs each:")
    for name, path in pages.items():
        timed(client, path, 3)  # warm-up
        print(f"  {name:14s} {describe(timed(client, path, args.requests))}", end="")
        with CaptureQueriesContext(connection) as queries:
            client.get(path)
        print(f"  {len(queries)} SQL statements")
    extra = {
        "usage, 1 model": "/console/usage/?model=bench-reasoner",
        "usage, page 50": "/console/usage/?page=50",
    }
    for name, path in extra.items():
        print(f"  {name:14s} {describe(timed(client, path, max(args.requests // 4, 5)))}")


if __name__ == "__main__":
    main()
