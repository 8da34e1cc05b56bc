"""Instructions per authorize+capture pair, in process: a repeatable CPU figure.

    .venv/bin/python bench/metering_instructions.py [--pairs 120] [--base 20] [--mode asgi]

Wall-clock and CPU-time figures on this shared 2-core machine move by a third from
minute to minute (see ``bench/metering.py``), too much to judge a change of a few
percent. This counts the instructions the web process executes per pair instead, with
``valgrind --tool=callgrind`` (user space only; the same for the same build and inputs
whatever else the machine does).

It seeds a scratch database (as ``bench/metering.py`` does, with 16 tokens), then runs a
child process twice under callgrind: each child sets Django up with the production
settings, runs ``--base`` pairs to warm up, then ``--pairs`` (or ``--base``) more. The
difference of the two totals divided by ``--pairs - --base`` is the figure, start-up
cancelled out. ``--mode asgi`` sends each request through ``config.asgi.application`` on
a uvloop event loop (the fast path's thread hop included; no HTTP parsing: uvicorn's
share is not counted); ``--mode serve`` calls ``usage.fastpath.serve`` directly. Every
response is checked (201, then 200). Takes about three minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import metering  # noqa: E402

AUTHORIZE = json.dumps(
    {"model": metering.MODEL, "messages": [{"role": "user", "content": "x" * 400}],
     "max_tokens": 500}
).encode()  # fmt: skip
CAPTURE = json.dumps(
    {"input_tokens": 120, "cached_input_tokens": 40, "output_tokens": 180, "latency_ms": 700,
     "metadata": {"retries": 0, "region": "us-east"}}
).encode()  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--base", type=int, default=20)
    parser.add_argument("--mode", choices=["asgi", "serve"], default="asgi")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/credits_i3_instructions"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # pairs, in the child
    parser.add_argument("--secrets", help=argparse.SUPPRESS)
    return parser.parse_args()


def _scope(path: str, secret: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1"), (b"authorization", f"Bearer {secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """Runs under callgrind: ``--base`` pairs, then ``--child`` more."""
    import uvloop

    from config.asgi import application
    from usage import fastpath

    secrets = args.secrets.split(",")

    async def through_asgi(path: str, secret: str, body: bytes) -> tuple[int, bytes]:
        sent: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            else:
                sent["body"] += message.get("body", b"")

        await application(_scope(path, secret, body), receive, send)
        return sent["status"], sent["body"]

    async def direct(path: str, secret: str, body: bytes) -> tuple[int, bytes]:
        scope = _scope(path, secret, body)
        target = fastpath.route(scope)
        assert target is not None, "not a fast-path request"
        status, _, content = fastpath.serve(scope, body, target)
        return status, content

    call = through_asgi if args.mode == "asgi" else direct

    async def pairs(count: int) -> None:
        for n in range(count):
            secret = secrets[n % len(secrets)]
            status, body = await call("/api/v1/authorizations", secret, AUTHORIZE)
            assert status == 201, body
            authorization_id = json.loads(body)["id"]
            path = f"/api/v1/authorizations/{authorization_id}/capture"
            status, body = await call(path, secret, CAPTURE)
            assert status == 200, body

    uvloop.run(pairs(args.base))
    uvloop.run(pairs(args.child))


def instructions(args: argparse.Namespace, secrets: list[str], pairs: int) -> int:
    env = {**metering.production_env(args, "bench-instructions"), "PYTHONHASHSEED": "0"}
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", str(pairs), "--base", str(args.base),
        "--mode", args.mode, "--secrets", ",".join(secrets),
        "--database-url", args.database_url, "--redis-url", args.redis_url,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError("callgrind reported no total:\n" + done.stderr[-3000:])


def main() -> int:
    args = parse_args()
    if args.child is not None:
        child(args)
        return 0
    if args.pairs <= args.base:
        raise SystemExit("--pairs must be more than --base")
    seed_args = argparse.Namespace(**vars(args), tokens=16, clients=1)
    metering.django_on_scratch_database(seed_args)
    from django.db import connection

    seeded = metering.seed(seed_args)
    connection.close()
    started = time.perf_counter()
    low = instructions(args, seeded.spread_tokens, args.base)
    high = instructions(args, seeded.spread_tokens, args.pairs)
    per_pair = (high - low) / (args.pairs - args.base)
    print(
        f"{args.mode}: {per_pair / 1e6:.2f}M instructions per authorize+capture pair "
        f"({high:,} - {low:,} over {args.pairs - args.base} pairs; "
        f"{time.perf_counter() - started:.0f} s under callgrind)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
