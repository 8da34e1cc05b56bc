"""Metering over HTTP against the production-style server.

    flock /tmp/credits-bench.lock .venv/bin/python bench/metering.py [--seconds 20]

Creates a scratch PostgreSQL database (dropped and re-created), seeds it, and starts
uvicorn with 3 workers, one more than the machine's cores (``config.settings.production``:
DEBUG off, pooled connections, Redis throttling on), bound to a free port on 127.0.0.1.
Then, with 16 concurrent clients
(one asyncio process speaking HTTP/1.1 keep-alive directly, to keep the load generator
cheap on a 2-core machine):

  (0) GET /healthz alone, the server's ceiling for any request on this machine;
  (a) authorize + capture pairs spread over 1,000 tokens and 1,000 wallets;
  (b) the same, all 16 clients on one organization's pool (16 members, a token each);
      (a) and (b) alternate for ``--rounds`` rounds (3) and each reports its median;
  (c) GET /api/v1/usage/export of 250k, 500k and 1M usage rows: rows per second and the
      serving worker's peak RSS (VmHWM, and the highest RSS sampled during the export).

It ends with ``wallet_verify`` over every wallet, which must be clean.

Targets (issue 3): (a) >= 300 pairs/s; export >= 50,000 rows/s with peak RSS < 250 MB,
flat as rows grow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "bench-chat"
EXPORT_SIZES = (250_000, 500_000, 1_000_000)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, default=3,
        help="uvicorn workers (3 on this 2-core machine: with 2, a core idles while "
        "PostgreSQL and the workers wait on each other)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="throughput rounds of (a) and (b), alternating; the median is the result "
        "(this machine's speed varies from minute to minute)",
    )  # fmt: skip
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_i3_bench"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    return parser.parse_args()


# --- Database -------------------------------------------------------------------------


def psql(url: str, sql: str, dbname: str | None = None) -> str:
    parsed = urlparse(url)
    args = [
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 5432),
        "-U", parsed.username or "postgres", "-c", sql, dbname or parsed.path.lstrip("/"),
    ]  # fmt: skip
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def recreate_database(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    psql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")
    psql(url, f'CREATE DATABASE "{name}"', "postgres")


@dataclass
class Seeded:
    spread_tokens: list[str]
    pool_tokens: list[str]
    export_token: str
    export_token_id: int
    export_user_id: int
    export_wallet_id: int
    price_id: int


def seed(args: argparse.Namespace) -> Seeded:
    from django.core.management import call_command

    from accounts import services as account_services
    from accounts.models import User
    from usage import services
    from wallet import services as wallet_services
    from wallet.models import CreditLot, Wallet

    call_command("migrate", verbosity=0)
    price = services.model_price_create(
        model=MODEL,
        display_name="Bench Chat",
        provider="Bench",
        input_usd_per_mtok="2.50",
        cached_input_usd_per_mtok="1.25",
        output_usd_per_mtok="10",
        max_output_tokens=4096,
    )
    users = User.objects.bulk_create(
        [User(email=f"bench{i}@example.com") for i in range(args.tokens + args.clients + 1)]
    )
    Wallet.objects.bulk_create([Wallet(user=user) for user in users])

    def fund(wallet_id: int, credits: int) -> None:
        wallet_services.wallet_credit(
            wallet=wallet_id,
            amount=credits * 1_000_000,
            category=CreditLot.Category.PAID,
            idempotency_key=f"bench-fund-{wallet_id}",
            reference=wallet_services.Ref("bench", "metering"),
        )

    spread: list[str] = []
    for user in users[: args.tokens]:
        fund(Wallet.objects.get(user=user).pk, 1_000_000)
        spread.append(
            account_services.api_token_create(user=user, name="bench", scopes=["metering", "read"])[
                1
            ]
        )
    owner = users[args.tokens]
    organization = account_services.organization_create(name="Bench Pool", owner=owner)
    fund(Wallet.objects.get(organization=organization).pk, 100_000_000)
    pool: list[str] = []
    for member in users[args.tokens : args.tokens + args.clients]:
        if member != owner:
            account_services.membership_add(organization=organization, user=member, actor=owner)
        pool.append(
            account_services.api_token_create(
                user=member, name="pool", scopes=["metering"], organization=organization
            )[1]
        )
    exporter = users[-1]
    export_token, export_secret = account_services.api_token_create(
        user=exporter, name="export", scopes=["read"]
    )
    return Seeded(
        spread_tokens=spread,
        pool_tokens=pool,
        export_token=export_secret,
        export_token_id=export_token.pk,
        export_user_id=exporter.pk,
        export_wallet_id=export_token.wallet_id,
        price_id=price.pk,
    )


def usage_rows_sql(
    *, prefix: str, wallet_id: int, user_id: int, token: str, price: str, model: str,
    first: int, last: int, moment: str,
) -> str:  # fmt: skip
    """``INSERT ... SELECT`` of usage records ``g`` = ``first``..``last`` with varied
    figures; ``token``, ``price``, ``model`` and ``moment`` (the record's time) are SQL
    expressions of ``g``."""
    return f"""
        INSERT INTO usage_usagerecord (
            request_id, wallet_id, user_id, token_id, token_group_id, price_id, model,
            endpoint, status, error, started_at, finished_at, latency_ms, input_tokens,
            output_tokens, cached_input_tokens, reasoning_tokens, task_units, unit_name,
            input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok,
            reasoning_usd_per_mtok, request_usd, unit_usd, markup, tier_rate,
            credits_per_usd, usd_cost, cost_micro, charged_micro, shortfall_micro,
            estimated, metadata, body_hash, created_at)
        SELECT '{prefix}-' || g, {wallet_id}, {user_id}, {token},
            (SELECT id FROM accounts_tokengroup WHERE is_default), {price},
            {model}, 'chat.completions',
            CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
            CASE WHEN g % 50 = 0 THEN 'upstream timeout' ELSE '' END,
            t - interval '900 milliseconds', t, 900, 1000 + g % 900, 200 + g % 300,
            g % 500, 0, 0, '', 2.5, 10, 1.25, 10, 0, 0, 1, 1, 1,
            ((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)
                / 1000000.0,
            ceil(((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)),
            ceil(((1000 + g % 900 - g % 500) * 2.5 + (g % 500) * 1.25 + (200 + g % 300) * 10)),
            0, false, '{{"region": "us-east", "retries": 0}}', md5(g::text), t
        FROM generate_series({first}, {last}) AS g,
             LATERAL (SELECT {moment} AS t) AS ts
        """


def insert_usage_rows(url: str, seeded: Seeded, start: int, count: int) -> None:
    """Bulk-load usage records for the export (one second apart, varied figures)."""
    psql(
        url,
        usage_rows_sql(
            prefix="export",
            wallet_id=seeded.export_wallet_id,
            user_id=seeded.export_user_id,
            token=str(seeded.export_token_id),
            price=str(seeded.price_id),
            model=f"'{MODEL}'",
            first=start,
            last=start + count - 1,
            moment="timestamptz '2026-01-01' + g * interval '1 second'",
        ),
    )
    psql(url, "VACUUM ANALYZE usage_usagerecord")


# --- Server ---------------------------------------------------------------------------

SERVE = r"""
import socket, sys
import uvicorn
from uvicorn.supervisors import Multiprocess
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config("config.asgi:application", host="127.0.0.1", port=0,
                        workers=int(sys.argv[1]), loop="uvloop", http="httptools",
                        access_log=False, lifespan="on", log_level="warning")
Multiprocess(config, sockets=[sock]).run()
"""


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def production_env(args: argparse.Namespace, cache_prefix: str) -> dict[str, str]:
    """The environment of a production-settings server on the scratch database (its
    required secrets are bench-only values)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production-use-0123456789",
        "REDEMPTION_CODE_SECRET": "bench-redemption-secret-not-for-production-0123456789",
        "UPSTREAM_KEY_SECRET": "bench-upstream-key-secret-not-for-production-0123456789",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "CACHE_KEY_PREFIX": cache_prefix,
        "API_TOKEN_RATE_LIMIT": "100000000",
        "DB_POOL_MIN_SIZE": "4",
        "DB_POOL_MAX_SIZE": "16",
        "LOG_LEVEL": "WARNING",
    }


def start_server(args: argparse.Namespace) -> Server:
    env = production_env(args, "bench-metering")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(args.workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    server = Server(process, port)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                pass
            if len(server.worker_pids()) >= args.workers:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("uvicorn did not come up")


# --- A small HTTP/1.1 keep-alive client (the load generator) --------------------------


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(
        self, method: str, path: str, secret: str, body: bytes = b"", sink: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers["content-length"]))
        chunks = []
        while True:  # chunked
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                break
            data = await self.reader.readexactly(size)
            await self.reader.readexactly(2)
            if sink is not None:
                sink(data)
            else:
                chunks.append(data)
        return status, headers, b"".join(chunks)


@dataclass
class PairStats:
    pairs: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


async def run_pairs(port: int, secrets: list[str], clients: int, seconds: float) -> dict[str, Any]:
    stats = PairStats()
    stop_at = 0.0
    counter = iter(range(10**9))
    authorize_body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 500}
    ).encode()
    capture_body = json.dumps(
        {
            "input_tokens": 120,
            "cached_input_tokens": 40,
            "output_tokens": 180,
            "latency_ms": 700,
            "metadata": {"retries": 0, "region": "us-east"},
        }
    ).encode()

    def error(kind: str) -> None:
        stats.errors[kind] = stats.errors.get(kind, 0) + 1

    async def client(index: int) -> None:
        connection = Connection(port)
        await connection.open()
        while time.perf_counter() < stop_at:
            n = next(counter)
            secret = secrets[n % len(secrets)]
            began = time.perf_counter()
            status, _, body = await connection.request(
                "POST", "/api/v1/authorizations", secret, authorize_body
            )
            if status != 201:
                error(f"authorize {status} {body[:80]!r}")
                continue
            authorization_id = json.loads(body)["id"]
            status, headers, body = await connection.request(
                "POST", f"/api/v1/authorizations/{authorization_id}/capture", secret, capture_body
            )
            if status != 200 or "x-credits-remaining" not in headers:
                error(f"capture {status} {body[:80]!r}")
                continue
            stats.latencies.append(time.perf_counter() - began)
            stats.pairs += 1
        connection.writer.close()

    stop_at = time.perf_counter() + seconds
    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    latencies = sorted(stats.latencies)
    return {
        "pairs_per_s": stats.pairs / elapsed,
        "pairs": stats.pairs,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        "errors": stats.errors,
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL backends serving ``database`` (their titles name it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("postgres:") and f" {database} " in title:
                pids.append(int(entry.name))
    return pids


async def run_floor(port: int, clients: int, seconds: float) -> float:
    """Requests per second of ``GET /healthz`` (one ``SELECT 1``, no token, no JSON body):
    the most this server, machine and client can do for any request at all."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        connection = Connection(port)
        await connection.open()
        while time.perf_counter() < stop_at:
            status, _, _ = await connection.request("GET", "/healthz", "-")
            done += status == 200
        connection.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - began)


def status_kb(pid: int, field_name: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


async def run_export(port: int, secret: str, until: str, pids: list[int]) -> dict[str, Any]:
    rows = 0
    total = 0
    peak_sampled = {pid: status_kb(pid, "VmRSS") for pid in pids}
    sampling = True

    def sample() -> None:
        while sampling:
            for pid in pids:
                peak_sampled[pid] = max(peak_sampled[pid], status_kb(pid, "VmRSS"))
            time.sleep(0.05)

    def sink(data: bytes) -> None:
        nonlocal rows, total
        rows += data.count(b"\n")
        total += len(data)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    connection = Connection(port)
    await connection.open()
    began = time.perf_counter()
    status, _, _ = await connection.request(
        "GET", f"/api/v1/usage/export?until={until}", secret, sink=sink
    )
    elapsed = time.perf_counter() - began
    sampling = False
    sampler.join()
    connection.writer.close()
    assert status == 200, status
    return {
        "rows": rows - 1,  # the header line
        "bytes": total,
        "seconds": elapsed,
        "rows_per_s": (rows - 1) / elapsed,
        "peak_rss_mb": max(peak_sampled.values()) / 1024,
        "hwm_mb": max(status_kb(pid, "VmHWM") for pid in pids) / 1024,
    }


# --- Main -----------------------------------------------------------------------------


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def django_on_scratch_database(args: argparse.Namespace) -> None:
    """Re-create the bench database and set Django up on it (local settings, DEBUG off)."""
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ["REDIS_URL"] = args.redis_url
    recreate_database(args.database_url)

    import django

    django.setup()


def main() -> int:
    args = parse_args()
    django_on_scratch_database(args)
    from django.db import connection

    from wallet.verify import wallet_verify

    started = time.perf_counter()
    seeded = seed(args)
    connection.close()
    print(f"seeded {args.tokens} tokens and wallets in {time.perf_counter() - started:.0f} s")
    server = start_server(args)
    results: dict[str, Any] = {}
    try:
        pids = server.worker_pids()
        print(f"uvicorn: {args.workers} workers {pids} on 127.0.0.1:{server.port}")
        asyncio.run(run_pairs(server.port, seeded.spread_tokens, args.clients, 3))  # warm-up
        floor = asyncio.run(run_floor(server.port, args.clients, min(args.seconds, 10)))
        results["floor"] = floor
        print(
            f"(0) GET /healthz: {floor:,.0f} requests/s, the ceiling for any request here "
            f"(a pair is two requests: at most {floor / 2:,.0f} pairs/s; load {load_average()})"
        )
        database = urlparse(args.database_url).path.lstrip("/")
        rounds: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        for _ in range(max(args.rounds, 1)):
            for name, secrets in (("a", seeded.spread_tokens), ("b", seeded.pool_tokens)):
                psql(args.database_url, "CHECKPOINT")
                backends = postgres_pids(database)
                before = (cpu_seconds(pids), cpu_seconds(backends), time.process_time())
                result = asyncio.run(run_pairs(server.port, secrets, args.clients, args.seconds))
                after = (cpu_seconds(pids), cpu_seconds(backends), time.process_time())
                pairs = max(result["pairs"], 1)
                result["cpu_ms_per_pair"] = {
                    part: (end - start) / pairs * 1000
                    for part, start, end in zip(
                        ("server", "postgres", "load generator"), before, after, strict=True
                    )
                }
                result["load"] = load_average()
                rounds[name].append(result)
                print(
                    f"({name}) {result['pairs_per_s']:7.1f} pairs/s  p50 {result['p50_ms']:.1f} "
                    f"ms  p99 {result['p99_ms']:.1f} ms  ({result['pairs']} pairs, errors "
                    f"{result['errors'] or 'none'}; load {result['load']})"
                )
                print(
                    "    CPU per pair: "
                    + ", ".join(f"{k} {v:.1f} ms" for k, v in result["cpu_ms_per_pair"].items())
                )
        for name, runs in rounds.items():
            ranked = sorted(runs, key=lambda r: r["pairs_per_s"])
            results[name] = ranked[len(ranked) // 2]
            print(
                f"({name}) median of {len(runs)}: {results[name]['pairs_per_s']:.1f} pairs/s "
                f"(range {ranked[0]['pairs_per_s']:.1f}-{ranked[-1]['pairs_per_s']:.1f})"
            )
        baseline = max(status_kb(pid, "VmRSS") for pid in pids) / 1024
        print(f"worker RSS before the exports: {baseline:.0f} MB")
        if not args.skip_export:
            loaded = 0
            for size in [s for s in EXPORT_SIZES if s <= args.export_rows] or [args.export_rows]:
                insert_usage_rows(args.database_url, seeded, loaded, size - loaded)
                loaded = size
                # Rows are one second apart from 2026-01-01, so this bound selects all of them.
                until = "2026-12-31T00:00:00Z"
                result = asyncio.run(run_export(server.port, seeded.export_token, until, pids))
                result["load"] = load_average()
                results[f"export_{size}"] = result
                print(
                    f"(c) export {result['rows']:>9,} rows: {result['rows_per_s']:>9,.0f} rows/s "
                    f"({result['bytes'] / 1e6:.0f} MB in {result['seconds']:.1f} s); worker RSS "
                    f"peak {result['peak_rss_mb']:.0f} MB, high-water {result['hwm_mb']:.0f} MB "
                    f"(load {result['load']})"
                )
    finally:
        server.stop()
    violations = wallet_verify()
    print(f"wallet_verify: {'clean' if not violations else f'{len(violations)} violations'}")
    for violation in violations[:20]:
        print(f"  {violation}")
    ok = results["a"]["pairs_per_s"] >= 300 and not violations
    exports = [v for k, v in results.items() if k.startswith("export_")]
    if exports:
        ok = ok and all(e["rows_per_s"] >= 50_000 and e["peak_rss_mb"] < 250 for e in exports)
    print("RESULT:", "targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
