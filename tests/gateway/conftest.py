"""A live gateway (the production ASGI application under uvicorn, in a thread) and two fake
OpenAI-compatible upstreams on 127.0.0.1; the official ``openai`` client talks to it."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from django.db import connections

from accounts.models import ApiToken, User
from tests.factories import UserFactory
from tests.gateway.fake_upstream import FakeUpstream, ServerThread
from tests.helpers import credit
from tests.usage.conftest import make_token
from tests.usage.conftest import prices as prices  # the usage tests' catalog, as a fixture
from usage import services
from usage.models import ModelPrice
from wallet.models import Wallet


class Gateway(ServerThread):
    def __init__(self) -> None:
        from config.asgi import application

        self.application = application
        self.active = 0  # ASGI calls in progress, settlements after the response included

        # A plain coroutine function: uvicorn takes a bound method for an ASGI2 app.
        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":  # the lifespan: closes upstream connections at stop
                await application(scope, receive, send)
                return
            self.active += 1  # only the server's event loop thread touches the counter
            try:
                await application(scope, receive, send)
            finally:
                self.active -= 1

        super().__init__(counted)
        self.server.config.lifespan = "on"

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until every call has finished, including captures deferred until after
        their response, so a test's database work never overlaps the next test's."""
        deadline = time.monotonic() + timeout
        while self.active:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.active} gateway calls still running")
            time.sleep(0.01)

    def stop(self) -> None:
        super().stop()
        # Each request thread keeps its database connection: close them, so the test
        # database can be dropped at the end of the session.
        for executor in self.application._idle_executors:
            executor.submit(connections.close_all).result(timeout=10)
            executor.shutdown(wait=True)


@pytest.fixture(scope="session")
def gateway_server() -> Iterator[Gateway]:
    server = Gateway().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _upstream_servers() -> Iterator[tuple[ServerThread, ServerThread]]:
    first = ServerThread(FakeUpstream()).start()
    second = ServerThread(FakeUpstream()).start()
    yield first, second
    first.stop()
    second.stop()


def _fresh(server: ServerThread) -> FakeUpstream:
    fake: FakeUpstream = server.server.config.app
    fake.__dict__.update(FakeUpstream().__dict__)
    fake.url = f"{server.url}/v1"  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def upstream(_upstream_servers: tuple[ServerThread, ServerThread], settings: Any) -> FakeUpstream:
    """The default channel's upstream (``UPSTREAM_BASE_URL``), answering normally."""
    fake = _fresh(_upstream_servers[0])
    settings.UPSTREAM_BASE_URL = fake.url  # type: ignore[attr-defined]
    settings.UPSTREAM_API_KEY = "sk-upstream-default"
    return fake


@pytest.fixture
def second_upstream(_upstream_servers: tuple[ServerThread, ServerThread]) -> FakeUpstream:
    return _fresh(_upstream_servers[1])


@pytest.fixture
def gateway(
    transactional_db: None, gateway_server: Gateway, upstream: FakeUpstream
) -> Iterator[Gateway]:
    # Set up after the database (so torn down before it is flushed).
    yield gateway_server
    gateway_server.wait_idle()


@pytest.fixture
def chat_price(transactional_db: None) -> ModelPrice:
    """$2.50 / $10 per million tokens: with 1 credit per USD, markup 1 and tier rate 1, a
    call costs 2.5 µcr per input token plus 10 µcr per output token."""
    return services.model_price_create(
        model="test-chat",
        display_name="Test Chat",
        provider="Test",
        input_usd_per_mtok="2.50",
        output_usd_per_mtok="10",
        max_output_tokens=4096,
    )


@pytest.fixture
def customer(transactional_db: None) -> User:
    return UserFactory()


@pytest.fixture
def funded_wallet(customer: User) -> Wallet:
    wallet = Wallet.objects.get(user=customer)
    credit(wallet, "10")
    return wallet


@pytest.fixture
def token_secret(customer: User, funded_wallet: Wallet, chat_price: ModelPrice) -> str:
    return make_token(customer, scopes=("inference",))[1]


@pytest.fixture
def make_client(gateway: Gateway) -> Callable[[str], openai.OpenAI]:
    def build(secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)

    return build


@pytest.fixture
def ai(make_client: Callable[[str], openai.OpenAI], token_secret: str) -> openai.OpenAI:
    """The official client, with a funded inference token."""
    return make_client(token_secret)


def token_of(secret: str) -> ApiToken:
    return ApiToken.objects.get(prefix=secret.split("-")[2])


def run_parallel(count: int, call: Callable[[int], Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))
