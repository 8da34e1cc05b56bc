"""The test suite runs on PostgreSQL and Redis (127.0.0.1) unless told otherwise."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/credits")
# Tests clear the cache between cases, which flushes a whole Redis database, so each xdist
# worker gets its own: TEST_REDIS_DB for the first worker, the next lower number for the
# second, and so on (pytest-django likewise gives each worker its own test database).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_redis_db = int(os.environ.get("TEST_REDIS_DB", "15")) - int(_worker.removeprefix("gw") or 0)
_redis_host = os.environ.get("TEST_REDIS_HOST", "redis://127.0.0.1:6379")
os.environ["REDIS_URL"] = f"{_redis_host}/{_redis_db}"
os.environ.setdefault("CACHE_KEY_PREFIX", f"test-{_worker}")

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import env  # noqa: E402

DEBUG = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
# Suites fund wallets with a few hundredths of a credit to reach the wallet's own limits;
# the minimum balance to start a request ($0.10 by default) is tested on its own
# (tests/usage/test_spend_controls.py), so it is off unless a test sets it.
METERING_MIN_BALANCE_CREDITS = env("METERING_MIN_BALANCE_CREDITS", default="0")
# Tests change upstream channels between calls: no per-process channel cache.
GATEWAY_CHANNEL_CACHE_SECONDS = 0.0
