"""End to end with a real Celery worker on Redis: the beat task is sent to the broker, the
worker (a separate process, reading the committed test database) decides the alert and
delivers it by its own after-commit task, and the email lands in a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from tests.alerts.conftest import spend
from tests.helpers import credit
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"
    )


@pytest.fixture
def mail_dir(tmp_path: Path) -> Path:
    path = tmp_path / "mail"
    path.mkdir()
    return path


@pytest.fixture
def worker(mail_dir: Path) -> Iterator[Celery]:
    """A `celery -A config worker` process on this test's Redis database, and a producer
    that sends it tasks and reads their results."""
    redis_url = settings.REDIS_URL  # this xdist worker's own Redis database
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Not the current app: tasks the later tests enqueue must still run eagerly in-process
    # (a new Celery app makes itself current, and shared tasks follow the current app).
    producer = Celery("test-producer", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        yield producer
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        producer.close()
        if process.returncode not in (0, -15):
            print(output.decode(errors="replace"))


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_real_worker_alerts_once_per_crossing(user, worker: Celery, mail_dir: Path) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1500")

    def sweep() -> str:
        result = worker.send_task("alerts.tasks.low_balance_sweep")
        # Earlier eager tasks in this process may have marked it as "inside a task".
        return str(result.get(timeout=25, disable_sync_subtasks=False))

    def mails() -> list[Path]:
        return sorted(mail_dir.iterdir())

    assert "alerted=0" in sweep()
    spend(wallet, "1000")  # 500: crossed below 1,000
    assert "alerted=1" in sweep()
    _wait_for(lambda: len(mails()) == 1)
    assert "alerted=0" in sweep()  # the same dip: nothing more
    credit(wallet, "1000")  # 1,500: above again
    assert "rearmed=1" in sweep()
    spend(wallet, "600")  # 900: crossed again
    assert "alerted=1" in sweep()
    assert "alerted=0" in sweep()
    _wait_for(lambda: len(mails()) == 2)
    time.sleep(0.5)  # nothing else arrives
    assert len(mails()) == 2
    body = mails()[0].read_text()
    assert user.email in body and "Your credit balance is low" in body
