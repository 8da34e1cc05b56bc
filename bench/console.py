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

from bench.metering import psql, recreate_database, usage_rows_sql  # noqa: E402

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
    models = ", ".join(f"'{m}'" for m in MODELS)
    psql(
        url,
        usage_rows_sql(
            prefix="bench",
            wallet_id=wallet_id,
            user_id=user.pk,
            token=f"(ARRAY{token_ids})[1 + g % {len(token_ids)}]",
            price=f"(ARRAY{price_ids})[1 + g % {len(price_ids)}]",
            model=f"(ARRAY[{models}])[1 + g % {len(MODELS)}]",
            first=0,
            last=rows - 1,
            moment=f"now() - ({rows - 1} - g) * interval '{step} seconds'",
        ),
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
