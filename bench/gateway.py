"""The gateway's overhead, against the fake upstream, in one run:

    flock /tmp/credits-bench.lock .venv/bin/python bench/gateway.py [--seconds 10]

(a) the fake OpenAI-compatible upstream called directly (``tests/gateway/fake_upstream.py``,
    uvicorn, one process);
(b) our gateway in front of it with metering on (uvicorn, one worker,
    ``config.settings.production``, a scratch PostgreSQL database re-created per run), and
    one settler process (``manage.py gateway_settler``) capturing the calls it answered
    (``--no-settler``: the web process settles them itself);
(c) LiteLLM's proxy in front of it, the peer: installed from PyPI into the bench-only
    virtual environment ``bench/.venv-litellm`` on first run, one worker, no database.

For each, streaming and not: serial latency (one client, p50/p99; "added" is the
difference to (a)), and requests/s with 16 concurrent keep-alive clients (one asyncio
process speaking HTTP/1.1 directly, to keep the load generator cheap on a small machine).
The CPU per request is reported for each server, and for our settler apart. Ends, once
every handed-over call is settled, with ``wallet_verify`` over every wallet, which must be
clean, and the count of usage records, which must equal the calls made.

Targets (issue 4): our added p50 <= 4 ms and <= 1/3 of LiteLLM's; our requests/s >= 3x
LiteLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metering import (  # noqa: E402  (bench/ is on the path when run as a script)
    Connection,
    Server,
    cpu_seconds,
    django_on_scratch_database,
    load_average,
    production_env,
    psql,
)

MODEL = "bench-chat"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_KEY = "sk-bench-litellm-master-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Tell me something about benchmarks. " * 5}]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--serial", type=int, default=300, help="requests per latency run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--no-settler", action="store_true", help="the web process settles its own calls"
    )
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_i4_bench"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[Any], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (http://127.0.0.1)
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


# --- The three servers ----------------------------------------------------------------------


def start_upstream() -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.fake_upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", process)
    return Server(process, port)


def seed(clients: int) -> list[str]:
    from django.core.management import call_command

    from accounts import services as account_services
    from accounts.models import User
    from usage import services
    from wallet import services as wallet_services
    from wallet.models import CreditLot, Wallet

    call_command("migrate", verbosity=0)
    services.model_price_create(
        model=MODEL,
        display_name="Bench Chat",
        provider="Bench",
        input_usd_per_mtok="2.50",
        output_usd_per_mtok="10",
        max_output_tokens=4096,
    )
    secrets = []
    for i in range(clients):
        user = User.objects.create_user(email=f"gateway{i}@example.com")
        wallet, _ = Wallet.objects.get_or_create(user=user)
        wallet_services.wallet_credit(
            wallet=wallet,
            amount=1_000_000 * 1_000_000,
            category=CreditLot.Category.PAID,
            idempotency_key=f"bench-gateway-{wallet.pk}",
            reference=wallet_services.Ref("bench", "gateway"),
        )
        secrets.append(
            account_services.api_token_create(user=user, name="bench", scopes=["inference"])[1]
        )
    return secrets


def start_gateway(args: argparse.Namespace, upstream_port: int) -> Server:
    port = free_port()
    env = {
        **production_env(args, "bench-gateway"),
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "UPSTREAM_API_KEY": "sk-bench-upstream",
    }
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--lifespan", "on", "--log-level", "warning",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz", process)
    return Server(process, port)


def start_settler(args: argparse.Namespace) -> subprocess.Popen[Any]:
    """One ``manage.py gateway_settler``, up once its heartbeat is in Redis."""
    import redis

    from usage.gateway import handoff

    client = redis.Redis.from_url(args.redis_url)
    client.delete(handoff.STREAM, handoff.ALIVE, handoff.DEAD)
    env = production_env(args, "bench-gateway")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "gateway_settler"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 60
    while not client.exists(handoff.ALIVE):
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError("the settler did not start")
        time.sleep(0.1)
    return process


def stop_settler(process: subprocess.Popen[Any]) -> None:
    """Stop it as an operator would (SIGTERM): it settles what is still queued first."""
    process.terminate()
    process.wait(timeout=120)


def litellm_python() -> Path | None:
    """The bench-only LiteLLM environment, created on first use; None if it cannot be."""
    python = LITELLM_VENV / "bin" / "python"
    if (LITELLM_VENV / "bin" / "litellm").exists():
        return python
    print("installing litellm[proxy] into bench/.venv-litellm (first run) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "litellm[proxy]"],
            check=True,
            timeout=1800,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"LiteLLM could not be installed ({exc}); measuring (a) and (b) only")
        return None
    return python


def start_litellm(python: Path, upstream_port: int, config_dir: Path) -> Server:
    port = free_port()
    config = config_dir / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                            "api_key": "sk-bench-upstream",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "drop_params": True},
            }
        )
    )
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("DATABASE", "DJ"))
    }
    # A master key (and no database): LiteLLM checks every request's key against it.
    env.update(
        LITELLM_MASTER_KEY=LITELLM_KEY,
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_SCHEMA_UPDATE="true",
    )
    process = subprocess.Popen(
        [
            str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1",
        ],
        cwd=config_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, seconds=180)
    return Server(process, port)


# --- Load -----------------------------------------------------------------------------------


def body(stream: bool, direct: bool) -> bytes:
    payload: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200}
    if stream:
        payload["stream"] = True
        if direct:  # what the gateways add on their own
            payload["stream_options"] = {"include_usage": True}
    return json.dumps(payload).encode()


async def one(connection: Connection, secret: str, payload: bytes, stream: bool) -> None:
    status, _, data = await connection.request("POST", "/v1/chat/completions", secret, payload)
    if status != 200:
        raise RuntimeError(f"{status} {data[:200]!r}")
    if stream and b"[DONE]" not in data:
        raise RuntimeError(f"incomplete stream {data[-200:]!r}")


async def serial(port: int, secret: str, payload: bytes, stream: bool, count: int) -> list[float]:
    connection = Connection(port)
    await connection.open()
    for _ in range(20):  # warm-up: connections, caches
        await one(connection, secret, payload, stream)
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        await one(connection, secret, payload, stream)
        latencies.append((time.perf_counter() - began) * 1000)
    connection.writer.close()
    return sorted(latencies)


async def throughput(
    port: int, secrets: list[str], payload: bytes, stream: bool, clients: int, seconds: float
) -> tuple[float, int]:
    done = errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal done, errors
        connection = Connection(port)
        await connection.open()
        while time.perf_counter() < stop_at:
            try:
                await one(connection, secrets[index % len(secrets)], payload, stream)
                done += 1
            except RuntimeError:
                errors += 1
            except (OSError, asyncio.IncompleteReadError):  # the server dropped the connection
                errors += 1
                connection.writer.close()
                connection = Connection(port)
                await connection.open()
        connection.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - began), errors


def pct(values: list[float], q: float) -> float:
    return values[min(int(len(values) * q), len(values) - 1)]


def measure(
    name: str,
    server: Server,
    secrets: list[str],
    args: argparse.Namespace,
    direct: bool,
    helper_pids: tuple[int, ...] = (),
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        payload = body(stream, direct)
        latencies = asyncio.run(serial(server.port, secrets[0], payload, stream, args.serial))
        cpu_before = cpu_seconds([server.process.pid])
        helper_before = cpu_seconds(list(helper_pids))
        rps, errors = asyncio.run(
            throughput(server.port, secrets, payload, stream, args.clients, args.seconds)
        )
        cpu = cpu_seconds([server.process.pid]) - cpu_before
        helper_cpu = cpu_seconds(list(helper_pids)) - helper_before
        calls = max(rps * args.seconds, 1)
        results[mode] = {
            "p50": pct(latencies, 0.5),
            "p99": pct(latencies, 0.99),
            "rps": rps,
            "errors": errors,
            "cpu_ms_per_request": cpu / calls * 1000,
            "helper_cpu_ms_per_request": helper_cpu / calls * 1000,
        }
        print(
            f"  {name:<9} {mode:<6} serial p50 {results[mode]['p50']:6.2f} ms  p99 "
            f"{results[mode]['p99']:6.2f} ms   {args.clients} clients: {rps:7.1f} req/s "
            f"(errors {errors}; load {load_average()})",
            flush=True,
        )
    return results


def main() -> int:
    args = parse_args()
    django_on_scratch_database(args)
    from django.db import connection

    from wallet.verify import wallet_verify

    secrets = seed(args.clients)
    connection.close()
    python = None if args.skip_litellm else litellm_python()
    servers: list[Server] = []
    settler: subprocess.Popen[Any] | None = None
    results: dict[str, dict[str, Any]] = {}
    try:
        upstream = start_upstream()
        servers.append(upstream)
        gateway = start_gateway(args, upstream.port)
        servers.append(gateway)
        if not args.no_settler:
            settler = start_settler(args)
        peers: list[tuple[str, Server, list[str], bool]] = [
            ("(a) direct", upstream, secrets, True),
            ("(b) ours", gateway, secrets, False),
        ]
        helpers = {"(b) ours": () if settler is None else (settler.pid,)}
        if python is not None:
            with tempfile.TemporaryDirectory() as config_dir:
                try:
                    litellm = start_litellm(python, upstream.port, Path(config_dir))
                    servers.append(litellm)
                    peers.append(("(c) litellm", litellm, [LITELLM_KEY], False))
                except RuntimeError as exc:
                    print(f"LiteLLM did not start ({exc}); measuring (a) and (b) only")
                print(f"load before: {load_average()}")
                for name, server, keys, direct in peers:
                    results[name] = measure(name, server, keys, args, direct, helpers.get(name, ()))
        else:
            for name, server, keys, direct in peers:
                results[name] = measure(name, server, keys, args, direct, helpers.get(name, ()))
    finally:
        if settler is not None:
            stop_settler(settler)
        for server in reversed(servers):
            server.stop()
    report(results)
    violations = wallet_verify()
    records = psql(args.database_url, "SELECT count(*), sum(charged_micro) FROM usage_usagerecord")
    print(f"usage records (count, µcr charged): {records.strip()}")
    unsettled = psql(
        args.database_url, "SELECT count(*) FROM usage_authorization WHERE settled_at IS NULL"
    )
    print(f"authorizations left unsettled: {unsettled.strip()}")
    print(f"wallet_verify: {'clean' if not violations else f'{len(violations)} violations'}")
    return 1 if violations or unsettled.strip() != "0" else 0


def report(results: dict[str, dict[str, Any]]) -> None:
    direct, ours = results["(a) direct"], results["(b) ours"]
    peer = results.get("(c) litellm")
    print("\nadded latency over calling the upstream directly (serial):")
    for mode in ("plain", "stream"):
        added = ours[mode]["p50"] - direct[mode]["p50"]
        added99 = ours[mode]["p99"] - direct[mode]["p99"]
        line = f"  {mode:<6} ours: p50 +{added:.2f} ms, p99 +{added99:.2f} ms"
        if peer:
            peer_added = peer[mode]["p50"] - direct[mode]["p50"]
            peer99 = peer[mode]["p99"] - direct[mode]["p99"]
            line += f"; litellm: p50 +{peer_added:.2f} ms, p99 +{peer99:.2f} ms"
            line += f"  -> ours is {added / peer_added:.2f} of litellm's"
        line += f"  [target p50 <= 4 ms: {'met' if added <= 4 else 'MISSED'}]"
        print(line)
    print(f"requests/s with {len(results) and 16} clients:")
    for mode in ("plain", "stream"):
        line = f"  {mode:<6} direct {direct[mode]['rps']:.0f}, ours {ours[mode]['rps']:.0f}"
        if peer:
            ratio = ours[mode]["rps"] / max(peer[mode]["rps"], 0.001)
            line += f", litellm {peer[mode]['rps']:.0f}  -> ours/litellm {ratio:.1f}x"
            line += f"  [target >= 3x: {'met' if ratio >= 3 else 'MISSED'}]"
        print(line)
    print(
        "server CPU ms per request (plain/stream): "
        + "; ".join(
            f"{name} {r['plain']['cpu_ms_per_request']:.2f}/{r['stream']['cpu_ms_per_request']:.2f}"
            for name, r in results.items()
        )
    )
    if ours["plain"]["helper_cpu_ms_per_request"] or ours["stream"]["helper_cpu_ms_per_request"]:
        print(
            "  our settler process, apart: "
            f"{ours['plain']['helper_cpu_ms_per_request']:.2f}/"
            f"{ours['stream']['helper_cpu_ms_per_request']:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
