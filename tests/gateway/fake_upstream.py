"""A fake OpenAI-compatible upstream on 127.0.0.1, as a plain ASGI app served by uvicorn
(in a thread for the tests, in a process for ``bench/gateway.py``).

``mode`` decides how it answers the next calls:

* ``normal``: a completion (or a stream) with its usage; a stream sends usage only when
  the request asks for it (``stream_options.include_usage``), as OpenAI does;
* ``no_usage``: streams without the usage chunk, whatever was asked;
* ``fail500``: a 500 with an OpenAI-shaped error;
* ``fail400``: a 400 with an OpenAI-shaped error;
* ``stall``: waits ``stall_seconds`` before answering anything;
* ``cut``: streams two chunks, then drops the connection mid-body.

Every request is kept in ``requests`` (path, headers, JSON body) so tests can check what
was sent upstream.

    python -m tests.gateway.fake_upstream --port 9100   # serve until interrupted
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

REPLY = "Hello! This is the fake upstream answering your question."
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 9
EMBEDDING = [0.25, -0.5, 0.125]


class Dropped(Exception):
    """Raised mid-response: uvicorn then closes the connection without finishing the body."""


@dataclass
class FakeUpstream:
    mode: str = "normal"
    reply: str = REPLY
    prompt_tokens: int = PROMPT_TOKENS
    completion_tokens: int = COMPLETION_TOKENS
    chunk_chars: int = 8
    chunk_delay: float = 0.0
    stall_seconds: float = 30.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    record: bool = True

    # --- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        body = json.loads(raw) if raw else {}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if self.record:
            self.requests.append({"path": scope["path"], "headers": headers, "body": body})
        mode = self.mode
        if mode == "stall":
            await asyncio.sleep(self.stall_seconds)
        if mode == "fail500":
            await _json(send, 500, _error("The fake upstream failed.", "server_error"))
            return
        if mode == "fail400":
            await _json(send, 400, _error("Bad prompt.", "invalid_request_error", "bad_prompt"))
            return
        path = scope["path"]
        if path.endswith("/embeddings"):
            await _json(send, 200, self.embedding(body))
        elif path.endswith("/chat/completions"):
            if body.get("stream"):
                await self.stream(send, body, mode)
            else:
                await _json(send, 200, self.completion(body))
        elif path.endswith("/models"):
            await _json(send, 200, {"object": "list", "data": []})
        else:
            await _json(send, 404, _error("No such path.", "invalid_request_error"))

    # --- Answers ----------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage(),
        }

    def embedding(self, body: dict[str, Any]) -> dict[str, Any]:
        items = body.get("input")
        count = len(items) if isinstance(items, list) else 1
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": EMBEDDING} for i in range(count)
            ],
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
        }

    def _chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        event = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    async def stream(self, send: Any, body: dict[str, Any], mode: str) -> None:
        model = body.get("model", "")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        parts = [
            self.reply[i : i + self.chunk_chars]
            for i in range(0, len(self.reply), self.chunk_chars)
        ]
        events = [self._chunk(model, {"role": "assistant", "content": ""})]
        events += [self._chunk(model, {"content": part}) for part in parts]
        events.append(self._chunk(model, {}, "stop"))
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and mode != "no_usage":
            usage_event = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": self.usage(),
            }
            events.append(b"data: " + json.dumps(usage_event).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        for number, event in enumerate(events):
            if mode == "cut" and number == 3:
                raise Dropped()
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await send({"type": "http.response.body", "body": b""})


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- Serving ---------------------------------------------------------------------------


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, lifespan="off", log_level="critical", access_log=False, loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible upstream.")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--mode", default="normal")
    args = parser.parse_args()
    app = FakeUpstream(mode=args.mode, record=False)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
