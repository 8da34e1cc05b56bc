"""A small fake of the Stripe API on 127.0.0.1, for the official ``stripe`` library.

It speaks the real wire format: form-encoded requests with nested ``a[b][0][c]`` keys,
``Authorization: Bearer`` keys, ``Idempotency-Key`` replays, JSON objects shaped like
Stripe's, and Stripe-style errors. Test controls (``pay``, ``decline``, ``expire``,
``refund_in_dashboard``, ``fail_next``) change its state the way a customer or the dashboard
would, and return the events Stripe would send; tests deliver those to our webhook endpoint,
signed the way Stripe signs them (``sign``).

For browser tests, ``host_checkout`` turns on a hosted-checkout page: sessions then get a
``url`` on this server, whose page has a Pay button that completes the session, delivers
the resulting events, signed, to our webhook endpoint, and sends the browser on to the
session's ``success_url`` (Cancel goes to ``cancel_url``), as Stripe Checkout does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "2026-10-28.endive"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header: ``t=<unix time>,v1=<HMAC-SHA256 of "t.payload">``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``line_items[0][price_data][currency]=usd`` -> nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node: Any) -> Any:
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [listify(node[k]) for k in sorted(node, key=int)]
            return {k: listify(v) for k, v in node.items()}
        return node

    return listify(root)


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {
                "type": type_,
                "code": code,
                "param": param,
                "message": message,
                "doc_url": f"https://stripe.com/docs/error-codes/{code}" if code else None,
                "request_log_url": "https://dashboard.stripe.com/test/logs/req_fake",
            }
        }


@dataclass
class Injected:
    method: str
    path_prefix: str
    status: int
    body: dict[str, Any]
    remaining: int
    after: bool = False  # the request is carried out, then the answer is lost


@dataclass
class FakeStripe:
    api_key: str = "sk_test_fake_key"
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _idempotent: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = field(
        default_factory=dict
    )
    _injected: list[Injected] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _server: ThreadingHTTPServer | None = None
    # Hosted checkout (``host_checkout``): where completed payments' events are delivered.
    webhook_url: str | None = None
    webhook_secret: str = ""

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                parts = urlsplit(self.path)
                query = parts.query if method == "GET" else raw
                params = _nest(parse_qsl(query, keep_blank_values=True))
                status, body, extra = fake.dispatch(
                    method, parts.path, params, dict(self.headers.items())
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _page(self, status: int, html: str = "", location: str = "") -> None:
                data = html.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.startswith("/c/pay/"):
                    status, html = fake.checkout_page(self.path.removeprefix("/c/pay/"))
                    self._page(status, html)
                    return
                self._handle("GET")

            def do_POST(self) -> None:
                if self.path.startswith("/c/pay/"):
                    length = int(self.headers.get("Content-Length") or 0)
                    self.rfile.read(length)
                    location = fake.checkout_pay(self.path.removeprefix("/c/pay/"))
                    self._page(303, location=location)
                    return
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            for store in (self.sessions, self.payment_intents, self.charges, self.refunds):
                store.clear()
            self.requests.clear()
            self.events.clear()
            self._idempotent.clear()
            self._injected.clear()
            self.webhook_url, self.webhook_secret = None, ""

    # --- HTTP -----------------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.requests.append((method, path, params))
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, StripeError(401, "Invalid API Key provided.").body, {}
            lost = None
            for injected in self._injected:
                if injected.method == method and path.startswith(injected.path_prefix):
                    injected.remaining -= 1
                    if injected.remaining <= 0:
                        self._injected.remove(injected)
                    if not injected.after:
                        return injected.status, injected.body, {"Stripe-Should-Retry": "false"}
                    lost = injected
                    break
            key = headers.get("Idempotency-Key")
            if method == "POST" and key and key in self._idempotent:
                seen_path, seen_params, status, body = self._idempotent[key]
                if (seen_path, seen_params) != (path, params):
                    error = StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                        type_="idempotency_error",
                    )
                    return 400, error.body, {}
                return status, body, {"Idempotent-Replayed": "true"}
            try:
                status, body = 200, self.route(method, path, params)
            except StripeError as exc:
                status, body = exc.status, exc.body
            if method == "POST" and key:
                self._idempotent[key] = (path, params, status, body)
            if lost is not None:
                return lost.status, lost.body, {"Stripe-Should-Retry": "false"}
            return status, body, {}

    def route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/v1/checkout/sessions", self._session_create),
            ("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)", self._session_get),
            ("POST", r"/v1/checkout/sessions/(?P<id>[^/]+)/expire", self._session_expire),
            ("GET", r"/v1/payment_intents/(?P<id>[^/]+)", self._payment_intent_get),
            ("GET", r"/v1/charges/(?P<id>[^/]+)", self._charge_get),
            ("POST", r"/v1/refunds", self._refund_create),
            ("GET", r"/v1/refunds/(?P<id>[^/]+)", self._refund_get),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return handler(params, **match.groupdict())
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    @staticmethod
    def _missing(name: str) -> StripeError:
        return StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )

    @staticmethod
    def _no_such(kind: str, object_id: str, param: str) -> StripeError:
        return StripeError(
            404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
        )

    def _session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("mode", "success_url", "line_items"):
            if not params.get(name):
                raise self._missing(name)
        if params["mode"] != "payment":
            raise StripeError(400, "Only payment mode is faked.", param="mode")
        items = params["line_items"]
        price = items[0].get("price_data") or {}
        if not price.get("currency") or not price.get("unit_amount"):
            raise self._missing("line_items[0][price_data][unit_amount]")
        amount = int(price["unit_amount"]) * int(items[0].get("quantity") or 1)
        now = int(time.time())
        expires_at = int(params.get("expires_at") or now + 86_400)
        if not now + 1_790 <= expires_at <= now + 86_400:
            raise StripeError(
                400,
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
                param="expires_at",
            )
        session_id = f"cs_test_{secrets.token_hex(12)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": price["currency"],
            "customer": None,
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": expires_at,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "mode": "payment",
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params["success_url"],
            "url": (
                f"{self.url}/c/pay/{session_id}"
                if self.webhook_url
                else f"https://checkout.stripe.com/c/pay/{session_id}"
            ),
            "_payment_intent_data": params.get("payment_intent_data") or {},
            "_line_items": items,
        }
        self.sessions[session_id] = session
        return self._public(session)

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise self._no_such("checkout.session", session_id, "session")
        return session

    def _session_get(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._public(self._session(id))

    def _session_expire(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        session = self._session(id)
        if session["status"] != "open":
            raise StripeError(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f'Checkout Session has a status of "{session["status"]}".',
            )
        session["status"] = "expired"
        return self._public(session)

    def _payment_intent_get(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        intent = self.payment_intents.get(id)
        if intent is None:
            raise self._no_such("payment_intent", id, "intent")
        return intent

    def _charge_get(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        charge = self.charges.get(id)
        if charge is None:
            raise self._no_such("charge", id, "id")
        return charge

    def _refund_get(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        refund = self.refunds.get(id)
        if refund is None:
            raise self._no_such("refund", id, "refund")
        return refund

    def _refund_create(self, params: dict[str, Any]) -> dict[str, Any]:
        intent_id = params.get("payment_intent")
        if not intent_id:
            raise self._missing("payment_intent")
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise self._no_such("payment_intent", intent_id, "payment_intent")
        charge = self.charges[intent["latest_charge"]]
        left = charge["amount"] - charge["amount_refunded"]
        amount = int(params.get("amount") or left)
        if left == 0:
            raise StripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if amount > left:
            raise StripeError(
                400,
                f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
                f"charge (${left / 100:.2f})",
                code="amount_too_large",
                param="amount",
            )
        return self._refund(charge, amount, params.get("metadata") or {})

    def _refund(
        self, charge: dict[str, Any], amount: int, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        refund = {
            "id": f"re_{secrets.token_hex(12)}",
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": "requested_by_customer",
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.events.append(self.event("refund.created", refund))
        self.events.append(self.event("charge.refunded", dict(charge)))
        return refund

    # --- hosted checkout (browser tests) ----------------------------------------------------

    def host_checkout(self, *, webhook_url: str, webhook_secret: str) -> None:
        """Serve a checkout page for new sessions; paying there delivers the events to
        ``webhook_url``, signed with ``webhook_secret``."""
        with self._lock:
            self.webhook_url, self.webhook_secret = webhook_url, webhook_secret

    def checkout_page(self, session_id: str) -> tuple[int, str]:
        with self._lock:
            session = self.sessions.get(session_id)
            if session is None:
                return 404, "<!doctype html><title>Not found</title><p>No such session.</p>"
            item = session["_line_items"][0].get("price_data", {})
            name = (item.get("product_data") or {}).get("name", "Credits")
            amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
            status = session["status"]
        pay = (
            f'<form method="post"><button type="submit">Pay {escape(amount)}</button></form>'
            if status == "open"
            else f"<p>This session is {escape(status)}.</p>"
        )
        cancel = escape(session.get("cancel_url") or "")
        return 200, (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>Fake Stripe Checkout</title></head><body>"
            f"<h1>Fake Stripe Checkout</h1><p>{escape(name)}</p><p>Total: {escape(amount)}</p>"
            f'{pay}<p><a href="{cancel}">Cancel</a></p></body></html>'
        )

    def checkout_pay(self, session_id: str) -> str:
        """The Pay button: complete the session, deliver every pending event to the webhook
        endpoint (signed, in order) and return where the browser goes next."""
        with self._lock:
            session = self._session(session_id)
            if session["status"] == "open":
                self.pay(session_id)
            events = self.take_events()
            url, secret = self.webhook_url, self.webhook_secret
            success = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
        for event in events:
            if url:
                payload = json.dumps(event)
                request = urllib.request.Request(  # noqa: S310 (our own local endpoint)
                    url,
                    data=payload.encode(),
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": sign(payload, secret),
                    },
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                    response.read()
        return success

    # --- test controls (what the customer, the bank or the dashboard does) ------------------

    def event(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": self._public(json.loads(json.dumps(obj)))},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }

    def _intent_for(self, session: dict[str, Any]) -> dict[str, Any]:
        if session["payment_intent"]:
            return self.payment_intents[session["payment_intent"]]
        intent = {
            "id": f"pi_{secrets.token_hex(12)}",
            "object": "payment_intent",
            "amount": session["amount_total"],
            "amount_received": 0,
            "currency": session["currency"],
            "created": int(time.time()),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(session["_payment_intent_data"].get("metadata") or {}),
            "status": "requires_payment_method",
        }
        self.payment_intents[intent["id"]] = intent
        session["payment_intent"] = intent["id"]
        return intent

    def pay(
        self, session_id: str, *, amount: int | None = None, currency: str | None = None
    ) -> dict[str, Any]:
        """The customer pays. Returns the ``checkout.session.completed`` event (the charge and
        payment-intent events Stripe also sends are appended to ``events``). ``amount`` /
        ``currency`` simulate a session whose total differs from what we asked for."""
        with self._lock:
            session = self._session(session_id)
            if session["status"] != "open":
                raise AssertionError(f"session is {session['status']}")
            if amount is not None:
                session["amount_total"] = session["amount_subtotal"] = amount
            if currency is not None:
                session["currency"] = currency
            intent = self._intent_for(session)
            charge = {
                "id": f"ch_{secrets.token_hex(12)}",
                "object": "charge",
                "amount": session["amount_total"],
                "amount_captured": session["amount_total"],
                "amount_refunded": 0,
                "captured": True,
                "created": int(time.time()),
                "currency": session["currency"],
                "livemode": False,
                "metadata": dict(intent["metadata"]),
                "paid": True,
                "payment_intent": intent["id"],
                "refunded": False,
                "status": "succeeded",
            }
            self.charges[charge["id"]] = charge
            intent.update(
                amount=session["amount_total"],
                amount_received=session["amount_total"],
                currency=session["currency"],
                latest_charge=charge["id"],
                status="succeeded",
                last_payment_error=None,
            )
            session.update(status="complete", payment_status="paid")
            self.events.append(self.event("charge.succeeded", charge))
            self.events.append(self.event("payment_intent.succeeded", intent))
            completed = self.event("checkout.session.completed", session)
            self.events.append(completed)
            return completed

    def decline(self, session_id: str, message: str = "Your card was declined.") -> dict[str, Any]:
        """A card is declined on the Checkout page; the session stays open for a retry."""
        with self._lock:
            session = self._session(session_id)
            intent = self._intent_for(session)
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": message,
                    "type": "card_error",
                },
            )
            failed = self.event("payment_intent.payment_failed", intent)
            self.events.append(failed)
            return failed

    def expire(self, session_id: str) -> dict[str, Any]:
        """Stripe expires an unpaid session."""
        with self._lock:
            session = self._session(session_id)
            session["status"] = "expired"
            expired = self.event("checkout.session.expired", session)
            self.events.append(expired)
            return expired

    def refund_in_dashboard(self, payment_intent_id: str, amount: int) -> dict[str, Any]:
        """Someone refunds in the Stripe dashboard; returns the ``charge.refunded`` event."""
        with self._lock:
            intent = self.payment_intents[payment_intent_id]
            self._refund(self.charges[intent["latest_charge"]], amount, {})
            return self.events[-1]

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        *,
        status: int = 500,
        message: str = "An unknown error occurred",
        type_: str = "api_error",
        code: str | None = None,
        count: int = 1,
        after: bool = False,
    ) -> None:
        """The next ``count`` matching requests get a Stripe error instead of an answer
        (``after=True``: the request is carried out first, as when a response is lost)."""
        with self._lock:
            self._injected.append(
                Injected(
                    method,
                    path_prefix,
                    status,
                    StripeError(status, message, type_=type_, code=code).body,
                    count,
                    after,
                )
            )

    def calls(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                p for m, path, p in self.requests if m == method and path.startswith(path_prefix)
            ]

    def take_events(self, type_: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            taken = [e for e in self.events if type_ is None or e["type"] == type_]
            self.events[:] = [e for e in self.events if e not in taken]
            return taken
