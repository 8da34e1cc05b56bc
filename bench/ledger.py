"""Ledger throughput: hold+capture pairs per second through ``wallet.services``.

    .venv/bin/python bench/ledger.py [--seconds 10] [--threads 8] [--database-url URL]

Runs, in one go, against a scratch PostgreSQL database (dropped and re-created):
  raw  pgbench: one conditional ``UPDATE ... SET balance = balance - 1 WHERE id = 1 AND
       balance >= 1`` with 8 clients, the ceiling of this machine for one hot row;
  (a)  8 threads doing hold_create + hold_capture, all on one hot wallet;
  (b)  8 threads doing the same, spread over 1,000 wallets;
then ``wallet_verify`` over every wallet, which must be clean.

Targets (issue 2): (a) >= 25% of raw; (b) >= 1,000 pairs/s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Interleaved rounds of raw/hot/spread; medians are reported.",
    )
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_bench"
    )
    return parser.parse_args()


def psql_args(url: str, dbname: str | None = None) -> list[str]:
    parsed = urlparse(url)
    return [
        "-h",
        parsed.hostname or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        parsed.username or "postgres",
        dbname or parsed.path.lstrip("/"),
    ]


def recreate_database(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, *psql_args(url, "postgres")],
            check=True,
        )


def checkpoint(url: str) -> None:
    """Each measurement starts right after a checkpoint, so none of them pays for one."""
    subprocess.run(["psql", "-q", "-c", "CHECKPOINT", *psql_args(url)], check=True)


def pgbench_raw(url: str, seconds: float, clients: int) -> float:
    setup = (
        "DROP TABLE IF EXISTS bench_raw; "
        "CREATE TABLE bench_raw (id int PRIMARY KEY, balance bigint NOT NULL); "
        "INSERT INTO bench_raw VALUES (1, 1000000000000);"
    )
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", setup, *psql_args(url)], check=True
    )
    checkpoint(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("UPDATE bench_raw SET balance = balance - 1 WHERE id = 1 AND balance >= 1;\n")
    result = subprocess.run(
        [
            "pgbench",
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(seconds)),
            "-f",
            script.name,
            *psql_args(url),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def run_pairs(wallet_ids: list[int], seconds: float, threads: int, label: str) -> dict[str, float]:
    from django.db import connection

    from wallet import services

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    counter = itertools.count()
    done = [0] * threads
    refused = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        try:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                n = next(counter)
                wallet_id = wallet_ids[n % len(wallet_ids)]
                began = time.perf_counter()
                hold = services.hold_create(
                    wallet=wallet_id, amount=1_000_000, request_id=f"{label}-{n}"
                )
                charge = services.hold_capture(hold=hold, amount=700_000)
                latencies[index].append(time.perf_counter() - began)
                if charge.charged == 700_000:
                    done[index] += 1
                else:
                    refused[index] += 1
        finally:
            connection.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    merged = sorted(x for part in latencies for x in part)
    return {
        "pairs_per_s": sum(done) / elapsed,
        "pairs": sum(done),
        "refused": sum(refused),
        "p50_ms": merged[len(merged) // 2] * 1000 if merged else 0.0,
        "p99_ms": merged[int(len(merged) * 0.99)] * 1000 if merged else 0.0,
    }


def main() -> int:
    args = parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DB_CONN_MAX_AGE", "600")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    recreate_database(args.database_url)

    import django

    django.setup()
    from django.core.management import call_command

    from accounts.models import User
    from wallet import services
    from wallet.models import CreditLot, Wallet
    from wallet.verify import wallet_verify

    call_command("migrate", verbosity=0)
    users = User.objects.bulk_create(
        [User(email=f"bench{i}@example.com") for i in range(args.wallets)]
    )
    Wallet.objects.bulk_create([Wallet(user=user) for user in users])
    wallet_ids = list(Wallet.objects.order_by("id").values_list("id", flat=True))
    for wallet_id in wallet_ids:
        services.wallet_credit(
            wallet=wallet_id,
            amount=10**14,
            category=CreditLot.Category.PAID,
            idempotency_key=f"bench-fund-{wallet_id}",
            reference=services.Ref("bench", "ledger"),
        )

    print(
        f"PostgreSQL {args.database_url}; {args.threads} threads; {args.seconds:.0f} s per run; "
        f"{args.rounds} interleaved rounds, each run right after a CHECKPOINT"
    )
    raws: list[float] = []
    hots: list[dict[str, float]] = []
    spreads: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        raws.append(pgbench_raw(args.database_url, args.seconds, args.threads))
        hots.append(run_pairs(wallet_ids[:1], args.seconds, args.threads, f"hot{number}"))
        spreads.append(run_pairs(wallet_ids, args.seconds, args.threads, f"spread{number}"))
        print(
            f"  round {number}: raw {raws[-1]:,.0f} tps, (a) {hots[-1]['pairs_per_s']:,.0f} "
            f"pairs/s ({hots[-1]['pairs_per_s'] / raws[-1]:.1%}), "
            f"(b) {spreads[-1]['pairs_per_s']:,.0f} pairs/s"
        )
    raw = statistics.median(raws)
    hot = sorted(hots, key=lambda r: r["pairs_per_s"])[len(hots) // 2]
    spread = sorted(spreads, key=lambda r: r["pairs_per_s"])[len(spreads) // 2]
    print(f"medians of {args.rounds} rounds:")
    print(f"raw   pgbench conditional UPDATE, 1 hot row, {args.threads} clients: {raw:,.0f} tps")
    for name, result in (("(a) one hot wallet", hot), (f"(b) {len(wallet_ids):,} wallets", spread)):
        print(
            f"{name:<22} {result['pairs_per_s']:>8,.0f} pairs/s   p50 {result['p50_ms']:.2f} ms"
            f"   p99 {result['p99_ms']:.2f} ms   ({result['pairs']:,} pairs, "
            f"{result['refused']} refused)"
        )
    share = hot["pairs_per_s"] / raw
    print(f"(a) is {share:.1%} of raw (target >= 25%); (b) target >= 1,000 pairs/s")
    violations = wallet_verify()
    print(f"wallet_verify: {'clean' if not violations else f'{len(violations)} violations'}")
    for violation in violations[:20]:
        print(f"  {violation}")
    ok = share >= 0.25 and spread["pairs_per_s"] >= 1000 and not violations
    print("RESULT:", "targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
