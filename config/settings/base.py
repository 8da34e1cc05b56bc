"""Settings shared by every environment. Every value comes from the environment with a
default that is safe for local use; `.env.example` lists them all."""

from decimal import Decimal
from pathlib import Path
from typing import Any

import dj_database_url
import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    env.read_env(str(BASE_DIR / ".env"))

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-development-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "accounts",
    "wallet",
    "billing",
    "usage",
    "referrals",
    "redemption",
    "alerts",
    "audit",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.CreditsRemainingMiddleware",
    "accounts.middleware.PageMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# PostgreSQL is the system of record in production and in the test suite; SQLite serves
# the zero-configuration local run.
DATABASE_URL = env("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env.int("DB_CONN_MAX_AGE", default=60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
    "DB_PREPARED_STATEMENTS", default=True
):
    # The hot-path statements of ``config.sql`` ask to be prepared once per connection
    # (parse and plan once, not per request). Django leaves psycopg's prepared statements
    # off, which ignores that; its own cursors bind on the client and never prepare, so
    # this changes nothing else. Turn it off behind a pooler that cannot keep them
    # (PgBouncer in transaction mode before 1.21).
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes SQLite's write lock at BEGIN, so concurrent writers queue instead of
    # failing half-way with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0


def pool_connections(database: Any) -> None:
    """Use a psycopg connection pool. Under ASGI every request runs its sync code in a
    thread of its own, so per-thread persistent connections are never reused; a pool hands
    connections across threads. Production turns it on (``DB_POOL``)."""
    if database["ENGINE"] != "django.db.backends.postgresql":
        return
    database["CONN_MAX_AGE"] = 0
    # Django's health check makes the pool test every connection it hands out with a round
    # trip to the server: one more per request. The pool already drops a connection that
    # comes back broken; after a database restart, a request that gets a stale one fails
    # (clients retry with their idempotency key). Turn it on where that matters more.
    database["CONN_HEALTH_CHECKS"] = env.bool("DB_POOL_HEALTH_CHECKS", default=False)
    database.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
        "timeout": env.int("DB_POOL_TIMEOUT", default=10),
    }


if env.bool("DB_POOL", default=False):
    pool_connections(DATABASES["default"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Covering indexes (INCLUDE) are PostgreSQL's; SQLite ignores the extra columns, harmlessly.
SILENCED_SYSTEM_CHECKS = ["models.W040"]

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "accounts:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Local runs serve static files straight from the app directories (no collectstatic).
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=DEBUG)

# --- Cache and Redis ------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "config.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="credits"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="")
# With no broker configured, tasks run in-process, so the product works with nothing else
# installed. Tasks are always enqueued after commit, so eager mode keeps the same ordering.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "usage-authorizations-close-stale": {
        "task": "usage.tasks.authorizations_close_stale",
        "schedule": 600.0,
    },
}

# --- Email ----------------------------------------------------------------------------
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Credits <no-reply@localhost>")

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["accounts.authentication.TokenRateThrottle"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.negotiation.JsonFirstNegotiation",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Credits platform API",
    "DESCRIPTION": "Prepaid AI credits: metering, wallet, top-ups, redemption and referrals.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "UsageStatusEnum": "usage.models.UsageRecord.Status",
        "AuthorizationStatusEnum": "usage.services.AUTHORIZATION_STATUSES",
    },
}

# --- Money ----------------------------------------------------------------------------
# Credits granted per US dollar. 1 gives "$1 = 1 credit" wallets; 1000 gives packs like
# "Starter ~8,100 credits". Prices are stored in USD and converted once, at pricing time.
CREDITS_PER_USD = Decimal(env.str("CREDITS_PER_USD", default="1"))
# Largest single movement of credits, in micro-credits; anything above is treated as a
# typing mistake rather than an intent (10^15 µcr = one billion credits).
WALLET_MAX_AMOUNT_MICRO = env.int("WALLET_MAX_AMOUNT_MICRO", default=10**15)
# Wallets warn (console banner, alert email) when the balance is below this many credits,
# unless the owner set their own threshold.
LOW_BALANCE_THRESHOLD_CREDITS = Decimal(env.str("LOW_BALANCE_THRESHOLD_CREDITS", default="1000"))
# How long an authorization hold lives before the expiry job returns it to the wallet.
WALLET_HOLD_TTL_SECONDS = env.int("WALLET_HOLD_TTL_SECONDS", default=900)
# Run the settle step as a PL/pgSQL call on PostgreSQL (False runs the portable Python path).
WALLET_PG_FUNCTIONS = env.bool("WALLET_PG_FUNCTIONS", default=True)
# Commit an authorization (its hold) without waiting for the disk flush: one fsync less on
# every metered call's path. A database crash may forget a hold, freeing its credits (the
# call then goes uncharged); captures, and every ledger entry, always wait for the disk.
HOLD_ASYNC_COMMIT = env.bool("HOLD_ASYNC_COMMIT", default=True)

# --- Top-ups and payments (billing) -----------------------------------------------------
# The currency customers pay in (ISO 4217, lower case as Stripe has it). Amounts are integer
# minor units (cents); only two-decimal currencies are supported, and each currency unit buys
# CREDITS_PER_USD credits.
BILLING_CURRENCY = env.str("BILLING_CURRENCY", default="usd").lower()
# Bounds of a custom top-up amount, in major units of BILLING_CURRENCY (presets and packages
# are set by staff in the admin and are not bound by these).
TOPUP_MIN_AMOUNT = Decimal(env.str("TOPUP_MIN_AMOUNT", default="5.00"))
TOPUP_MAX_AMOUNT = Decimal(env.str("TOPUP_MAX_AMOUNT", default="10000.00"))
# Order creation per user per hour (each one opens a Stripe Checkout Session).
TOPUP_CREATE_LIMIT = env.int("TOPUP_CREATE_LIMIT", default=30)
TOPUP_CREATE_WINDOW_SECONDS = env.int("TOPUP_CREATE_WINDOW_SECONDS", default=3600)
# Payment providers by name; a new provider is one more class here (billing/providers/).
BILLING_PROVIDERS = {
    "stripe": "billing.providers.stripe.StripeProvider",
    "manual": "billing.providers.manual.ManualProvider",
}
# Bank transfer confirmed by staff in the admin; the customer sees these instructions.
BILLING_MANUAL_PAYMENTS_ENABLED = env.bool("BILLING_MANUAL_PAYMENTS_ENABLED", default=True)
BILLING_MANUAL_INSTRUCTIONS = env.str(
    "BILLING_MANUAL_INSTRUCTIONS",
    default="Transfer {amount} {currency} to the account on your invoice, quoting {order_no}.",
)
# Manual orders nobody paid are cancelled after this many days.
BILLING_MANUAL_ORDER_TTL_DAYS = env.int("BILLING_MANUAL_ORDER_TTL_DAYS", default=14)
# Reconciliation asks the provider about orders still pending after this many minutes.
BILLING_RECONCILE_AFTER_MINUTES = env.int("BILLING_RECONCILE_AFTER_MINUTES", default=15)
BILLING_RECONCILE_BATCH_SIZE = env.int("BILLING_RECONCILE_BATCH_SIZE", default=200)
# A stored webhook event whose processing failed is retried this many times in all.
BILLING_WEBHOOK_MAX_ATTEMPTS = env.int("BILLING_WEBHOOK_MAX_ATTEMPTS", default=10)

# Stripe: keys from the dashboard (Developers -> API keys / Webhooks). STRIPE_API_BASE is
# only for pointing the official client at a local fake (tests) or a proxy.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300)
STRIPE_TIMEOUT_SECONDS = env.int("STRIPE_TIMEOUT_SECONDS", default=20)
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
# How long a Checkout Session stays payable (Stripe allows 30 minutes to 24 hours).
STRIPE_CHECKOUT_EXPIRY_MINUTES = env.int("STRIPE_CHECKOUT_EXPIRY_MINUTES", default=60)

CELERY_BEAT_SCHEDULE["billing-reconcile-payments"] = {
    "task": "billing.tasks.reconcile_payments",
    "schedule": 300.0,
}
# Invite rewards normally follow a top-up within seconds; this hourly sweep pays any the
# follow-up task missed, looking back this many days.
REFERRAL_RECONCILE_DAYS = env.int("REFERRAL_RECONCILE_DAYS", default=7)
CELERY_BEAT_SCHEDULE["referrals-reconcile-rewards"] = {
    "task": "referrals.tasks.reconcile_referral_rewards",
    "schedule": 3600.0,
}

# --- Upstream API keys ----------------------------------------------------------------
# The gateway's provider keys are stored sealed under this secret (usage.keybox). Keep it;
# to rotate, set a new one and list the old one in PREVIOUS, then run
# `manage.py upstream_keys_reseal`. Empty derives one from DJANGO_SECRET_KEY (local use only).
UPSTREAM_KEY_SECRET = env.str("UPSTREAM_KEY_SECRET", default="")
UPSTREAM_KEY_PREVIOUS_SECRETS = env.list("UPSTREAM_KEY_PREVIOUS_SECRETS", default=[])

# --- Redemption codes ---------------------------------------------------------------------
# Codes are stored only as HMAC-SHA256 under this key (plus a 4-character hint), so a copy of
# the database does not reveal them. Set it in production and keep it: changing it makes
# every unredeemed code unknown unless the old key is listed in the PREVIOUS list. Empty
# derives a key from DJANGO_SECRET_KEY (fine for local use only).
REDEMPTION_CODE_SECRET = env.str("REDEMPTION_CODE_SECRET", default="")
REDEMPTION_CODE_PREVIOUS_SECRETS = env.list("REDEMPTION_CODE_PREVIOUS_SECRETS", default=[])
# Failed redemption attempts allowed per user and per client address in each window.
REDEMPTION_FAILURE_LIMIT = env.int("REDEMPTION_FAILURE_LIMIT", default=10)
REDEMPTION_FAILURE_WINDOW_SECONDS = env.int("REDEMPTION_FAILURE_WINDOW_SECONDS", default=3600)
REDEMPTION_MAX_CODES_PER_BATCH = env.int("REDEMPTION_MAX_CODES_PER_BATCH", default=10_000)

# --- Invite rewards -----------------------------------------------------------------------
# Smallest reward balance a user may move to their wallet at once, in credits.
REFERRAL_MIN_TRANSFER = Decimal(env.str("REFERRAL_MIN_TRANSFER", default="10"))
# How long an invite link is remembered in the visitor's browser before they sign up.
REFERRAL_COOKIE_DAYS = env.int("REFERRAL_COOKIE_DAYS", default=30)
# Multiplier on every model price (DESIGN.md ``markup``); 1 sells at the providers' prices.
PRICE_MARKUP = Decimal(env.str("PRICE_MARKUP", default="1"))

# --- API tokens and metering ----------------------------------------------------------
# Requests per minute one API token may make (0 switches the limit off).
API_TOKEN_RATE_LIMIT = env.int("API_TOKEN_RATE_LIMIT", default=1200)
# A token's last_used_at is written at most once per this many seconds.
API_TOKEN_LAST_USED_INTERVAL = env.int("API_TOKEN_LAST_USED_INTERVAL", default=60)
# Output tokens reserved when an authorization names no max_tokens (and the model no cap).
METERING_DEFAULT_MAX_TOKENS = env.int("METERING_DEFAULT_MAX_TOKENS", default=4096)
# Largest token count accepted in any field of one request; more is a mistake, not usage.
METERING_MAX_TOKENS = env.int("METERING_MAX_TOKENS", default=10_000_000)
# How long after its hold expired an authorization can still be captured (and charged).
METERING_LATE_CAPTURE_SECONDS = env.int("METERING_LATE_CAPTURE_SECONDS", default=86400)
# Serve POST /api/v1/authorizations and .../capture with bearer tokens without the
# middleware stack and DRF's request machinery (usage/fastpath.py; ASGI only). Off: every
# request takes the full stack.
METERING_FAST_PATH = env.bool("METERING_FAST_PATH", default=True)
# Entries the fast path keeps per process in each of its memos (tokens, model prices,
# authorizations it opened), for up to a minute, so a request need not read them again;
# every write is checked against the rows' current state in the same statement
# (config/cached_reads.py; PostgreSQL only). 0 turns them off.
METERING_CACHE_SIZE = env.int("METERING_CACHE_SIZE", default=10_000)
# Bytes per chunk of the streamed usage export.
USAGE_EXPORT_CHUNK_BYTES = env.int("USAGE_EXPORT_CHUNK_BYTES", default=256 * 1024)
# Let PostgreSQL format the export with COPY (False uses the portable Python writer).
USAGE_EXPORT_COPY = env.bool("USAGE_EXPORT_COPY", default=True)

# --- Abuse limits ---------------------------------------------------------------------
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10)
LOGIN_FAILURE_WINDOW_SECONDS = env.int("LOGIN_FAILURE_WINDOW_SECONDS", default=900)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # One INFO line per HTTP call from the Stripe client is noise; failures are logged by
    # billing.providers at WARNING/ERROR.
    "loggers": {
        "stripe": {"level": env("STRIPE_LOG_LEVEL", default="WARNING")},
        "httpx": {"level": "WARNING"},
    },
}

# --- Staff console, alerts and background jobs (issue 8) ----------------------------------
# Largest balance adjustment (or promotional grant, or charge correction) Support may make
# at once, in credits; above it needs Finance (audit.adjust_balance_unlimited).
SUPPORT_ADJUST_LIMIT_CREDITS = Decimal(env.str("SUPPORT_ADJUST_LIMIT_CREDITS", default="100"))
# Organization spend alerts: warn when a member or the pool has spent this share (percent)
# of its monthly limit.
ORG_SPEND_ALERT_PERCENT = env.int("ORG_SPEND_ALERT_PERCENT", default=80)
# Customer alert webhooks (User.alert_webhook_url): request timeout in seconds.
ALERT_WEBHOOK_TIMEOUT_SECONDS = env.float("ALERT_WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# Where EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend writes messages.
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(BASE_DIR / "sent-mail"))
CELERY_BEAT_SCHEDULE.update(
    {
        "wallet-holds-expire": {"task": "wallet.tasks.holds_expire", "schedule": 60.0},
        "wallet-lots-expire": {"task": "wallet.tasks.lots_expire", "schedule": 3600.0},
        "alerts-low-balance": {"task": "alerts.tasks.low_balance_sweep", "schedule": 60.0},
        "alerts-organization-spend": {
            "task": "alerts.tasks.organization_spend_sweep",
            "schedule": 300.0,
        },
        "billing-recurring-grants": {"task": "billing.tasks.recurring_grants", "schedule": 3600.0},
    }
)
# --- Console and daily usage rollups (issue 7) -------------------------------------------
# Finished UTC days are rolled up into usage.UsageDaily; a day counts as finished this long
# after midnight (requests still settling at midnight land first).
USAGE_ROLLUP_GRACE_SECONDS = env.int("USAGE_ROLLUP_GRACE_SECONDS", default=600)
CELERY_BEAT_SCHEDULE["usage-rollup-daily"] = {
    "task": "usage.tasks.usage_rollup_daily",
    "schedule": env.float("USAGE_ROLLUP_INTERVAL_SECONDS", default=900.0),
}
CONSOLE_PAGE_SIZE = env.int("CONSOLE_PAGE_SIZE", default=50)
# --- Spend controls and content logging (usage) ---------------------------------------
# Fewer available credits than this and no request may start (limit_source
# minimum_balance); each wallet may override it. Empty: the credit value of $0.10.
METERING_MIN_BALANCE_CREDITS = env("METERING_MIN_BALANCE_CREDITS", default="")
# Redis for the per-token requests/tokens-per-minute limits; empty: the cache's Redis.
# If it cannot be reached the limits fail open (logged); budgets and balances never do.
RATE_LIMIT_REDIS_URL = env("RATE_LIMIT_REDIS_URL", default="")
# Opt-in content logging: each logged part is cut to this many characters, and logged
# content is deleted this many days after its request.
CONTENT_LOG_MAX_CHARS = env.int("CONTENT_LOG_MAX_CHARS", default=20_000)
CONTENT_RETENTION_DAYS = env.int("CONTENT_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE["usage-content-purge"] = {
    "task": "usage.tasks.usage_content_purge",
    "schedule": 3600.0,
}

# --- OpenAI-compatible gateway (/v1/...) ---------------------------------------------------
# With no enabled upstream channel in the admin, these form the default channel.
UPSTREAM_BASE_URL = env("UPSTREAM_BASE_URL", default="https://openrouter.ai/api/v1")
UPSTREAM_API_KEY = env("UPSTREAM_API_KEY", default="")
# Seconds to open a connection to an upstream, and to wait for its next bytes.
GATEWAY_CONNECT_TIMEOUT = env.float("GATEWAY_CONNECT_TIMEOUT", default=5.0)
GATEWAY_READ_TIMEOUT = env.float("GATEWAY_READ_TIMEOUT", default=120.0)
# Extra certificate authorities (a PEM file) to trust for upstreams, besides the system's.
GATEWAY_CA_BUNDLE = env.str("GATEWAY_CA_BUNDLE", default="")
# Pooled keep-alive connections to the upstreams, per web process.
GATEWAY_MAX_CONNECTIONS = env.int("GATEWAY_MAX_CONNECTIONS", default=200)
# Seconds each process keeps the channel list (an admin edit takes effect within this).
GATEWAY_CHANNEL_CACHE_SECONDS = env.float("GATEWAY_CHANNEL_CACHE_SECONDS", default=5.0)
# Hand each answered call's settlement to the settler processes (manage.py gateway_settler)
# while one is running, instead of settling it in the web process (usage.gateway.handoff).
GATEWAY_SETTLERS = env.bool("GATEWAY_SETTLERS", default=True)
# Seconds before a job a settler read and never acknowledged (it died) goes to another.
GATEWAY_SETTLE_CLAIM_SECONDS = env.float("GATEWAY_SETTLE_CLAIM_SECONDS", default=30.0)
# Deliveries of one job before it is moved to the dead-letter list for an operator.
GATEWAY_SETTLE_MAX_DELIVERIES = env.int("GATEWAY_SETTLE_MAX_DELIVERIES", default=5)

# --- Organization invitations -------------------------------------------------------------
# Days an emailed invitation to join an organization stays usable.
ORGANIZATION_INVITATION_DAYS = env.int("ORGANIZATION_INVITATION_DAYS", default=7)
