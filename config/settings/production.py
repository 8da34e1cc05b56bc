"""Production: everything must come from the environment; nothing insecure by default."""

from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASES, env, pool_connections

# The production server is ASGI (uvicorn): pool database connections unless told not to.
if env.bool("DB_POOL", default=True):
    pool_connections(DATABASES["default"])

DEBUG = False
SECRET_KEY = env("DJANGO_SECRET_KEY")
# Redemption codes are stored as HMACs under this key; it must outlive secret-key rotations.
REDEMPTION_CODE_SECRET = env("REDEMPTION_CODE_SECRET")
# Provider keys of the gateway's channels are sealed under this one; it must be kept too.
UPSTREAM_KEY_SECRET = env("UPSTREAM_KEY_SECRET")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
