"""Settings: every deployable value comes from the environment, with laptop defaults.

A malformed value fails loudly at start-up rather than silently falling back.
`.env.example` lists every variable read here.
"""

from __future__ import annotations

import ipaddress
import math
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from llmgateway.logconfig import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false")
    SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["*"] if DEBUG else [])
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# How log lines look (llmgateway/logconfig.py): "text" for a terminal, "json" (one object
# per line, the image's default) for a log pipeline. Each line of a request carries its
# request_id, key, model and route; LOG_ACCESS adds one access line per request.
LOG_FORMAT = env_str("LOG_FORMAT", "text").strip().lower()
LOG_ACCESS = env_bool("LOG_ACCESS", True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles, whose `runserver` (WSGI, buffers streams) ours replaces.
    "llmgateway",
    "django.contrib.staticfiles",
    "llmgateway.devtriton",
    "accounts",
    # Django Ninja's templates and static files: /docs serves Swagger UI from the
    # installed package (offline), not from a CDN.
    "ninja",
    # Admin login throttling (see AXES_* below).
    "axes",
]

MIDDLEWARE = [
    "llmgateway.api.middleware.request_id_middleware",
    # The request-log row of every inference request refused before admission
    # (400/401/404/429; an admitted one's row comes with its settlement): one row per
    # request. A no-op when GATEWAY_PLATFORM is off.
    "accounts.middleware.request_log_middleware",
    "llmgateway.api.middleware.body_limit_middleware",
    "llmgateway.api.middleware.admin_middleware",
]
# Wrapped around the admin and other non-API paths only (see api/middleware.py).
ADMIN_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files under uvicorn (no separate web server needed).
    "accounts.static.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "llmgateway.urls"
ASGI_APPLICATION = "llmgateway.asgi.application"
WSGI_APPLICATION = "llmgateway.wsgi.application"
# The API answers JSON 404s itself; never redirect POST /v1/x to /v1/x/.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = env_str("DATABASE_URL", "")
# SQLite's options. IMMEDIATE: every transaction takes the write lock when it begins.
# A deferred one that reads and then writes (an admin save, update_or_create, the
# demo's and `serve`'s model upserts) would fail at once with "database is locked"
# whenever another process, a gateway writing its request logs, is committing: SQLite
# refuses to wait there, since waiting could deadlock. IMMEDIATE waits (up to `timeout`
# seconds) instead. The test process overrides it (tests/conftest.py).
SQLITE_OPTIONS = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
# PostgreSQL's time limits, in seconds. A request meets a database that refuses or stops
# answering with a 503 within connect + statement timeout (llmgateway/db.py). The
# statement and idle limits apply to the web server's sessions (llmgateway/asgi.py), not
# to management commands such as migrate, whose statements may rightly run long.
# Connect: libpq counts whole seconds, at least 2.
DATABASE_CONNECT_TIMEOUT = max(2, math.ceil(env_float("DATABASE_CONNECT_TIMEOUT", 3.0)))
DATABASE_STATEMENT_TIMEOUT = env_float("DATABASE_STATEMENT_TIMEOUT", 5.0)
# A session idle inside a transaction this long is ended by the server, releasing its
# locks (a quota row locked by a stalled process would hold up every request of its key).
DATABASE_IDLE_TIMEOUT = env_float("DATABASE_IDLE_TIMEOUT", 30.0)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            connect_timeout=DATABASE_CONNECT_TIMEOUT,
            # A peer that vanished (host down, network cut) is noticed on an idle
            # connection within about a minute, not after the kernel's two hours.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": SQLITE_OPTIONS,
            # A file, not memory, so a gateway process started by the tests shares it.
            "TEST": {
                "NAME": env_str("SQLITE_TEST_PATH", str(BASE_DIR / "var" / "test-db.sqlite3"))
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Optional: shared counters for quotas across replicas. Unset means the database.
REDIS_URL = env_str("REDIS_URL", "")

# The admin's login: django-axes counts failed logins per username and client address
# (REMOTE_ADDR: behind a proxy, the proxy's) and refuses that pair for the cool-off
# period once ADMIN_LOGIN_FAILURE_LIMIT logins failed, the right password included.
# `manage.py axes_reset` lifts lockouts. Its backend runs before Django's own.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("ADMIN_LOGIN_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The address axes counts by: the connection's, never a header a client could forge.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

# HTTPS for the admin's cookies and pages, on whenever DEBUG is off (TLS terminates at
# the ingress or a proxy in front of the gateway; docs/deploy.md "TLS and ingress").
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Redirects plain-HTTP admin pages to HTTPS (the API and probes are never redirected:
# SecurityMiddleware wraps only the admin's paths).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# The header a TLS-terminating proxy sets, as "HEADER,value" (e.g.
# "X-Forwarded-Proto,https"). Only behind such a proxy: a client could send it itself.
_proxy_ssl_header = env_str("SECURE_PROXY_SSL_HEADER", "")
if _proxy_ssl_header:
    _header, _, _value = _proxy_ssl_header.partition(",")
    if not _header.strip() or not _value.strip():
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={_proxy_ssl_header!r}: use HEADER,value "
            "(e.g. X-Forwarded-Proto,https)"
        )
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _header.strip().upper().replace("-", "_"),
        _value.strip(),
    )
# Origins (https://admin.example.com) whose admin form posts pass the CSRF check.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static"))
# Serve app static files straight from their packages: no collectstatic step needed.
WHITENOISE_USE_FINDERS = True

# Gateway behaviour.
# Largest request body accepted by the API, in bytes (images arrive inline as data: URLs).
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES
# HTTP limits of `serve` and `runserver` (llmgateway/http_limits.py; uvicorn sets none):
# the request line and all headers in bytes (414 / 431 beyond), and the seconds a client
# may take to send a request's head, and then its body (408 and closed beyond).
HTTP_MAX_REQUEST_LINE_BYTES = env_int("HTTP_MAX_REQUEST_LINE_BYTES", 16 * 1024)
HTTP_MAX_HEADER_BYTES = env_int("HTTP_MAX_HEADER_BYTES", 64 * 1024)
HTTP_HEADER_TIMEOUT = env_float("HTTP_HEADER_TIMEOUT", 10.0)
HTTP_BODY_TIMEOUT = env_float("HTTP_BODY_TIMEOUT", 60.0)
# Largest guide (JSON schema) sent to TensorRT-LLM's guided decoding, in bytes: Triton
# compiles each request's grammar, and a huge schema would hold up its other requests.
GUIDED_DECODING_MAX_SCHEMA_BYTES = env_int("GUIDED_DECODING_MAX_SCHEMA_BYTES", 128 * 1024)
# Preparing a prompt (chat template, tokenizer) runs in a pool of this many threads, off
# the event loop, so a long prompt never holds up the process's other requests
# (llmgateway/runner/prepare.py). Bodies of at most GATEWAY_PREPARE_INLINE_BYTES are
# prepared on the loop: their work (under a millisecond) costs less than the hop.
GATEWAY_PREPARE_THREADS = env_int("GATEWAY_PREPARE_THREADS", 2)
GATEWAY_PREPARE_INLINE_BYTES = env_int("GATEWAY_PREPARE_INLINE_BYTES", 8 * 1024)
# Most items a request's lists may hold (400 naming the parameter beyond): chat messages,
# tools (OpenAI's own limit is 128), stop strings (`stop`, /generate's `stop_words`), and
# generated sequences (`n`, and `num_beams` on /generate).
GATEWAY_MAX_MESSAGES = env_int("GATEWAY_MAX_MESSAGES", 2048)
GATEWAY_MAX_TOOLS = env_int("GATEWAY_MAX_TOOLS", 128)
GATEWAY_MAX_STOPS = env_int("GATEWAY_MAX_STOPS", 16)
GATEWAY_MAX_SEQUENCES = env_int("GATEWAY_MAX_SEQUENCES", 16)
# Every LOOP_LAG_PROBE_MS milliseconds a task on each event loop measures how late it
# wakes: /metrics' llmgateway_event_loop_lag_seconds shows anything holding the loop up.
# 0: off (each wake-up costs a little CPU).
LOOP_LAG_PROBE_MS = env_float("LOOP_LAG_PROBE_MS", 0.0)
# Default and ceiling for a request's deadline in seconds (clients may ask for less).
GATEWAY_REQUEST_TIMEOUT = env_float("GATEWAY_REQUEST_TIMEOUT", 600.0)
# How long to wait for Triton to answer a health/config call before calling it unreachable.
TRITON_CONNECT_TIMEOUT = env_float("TRITON_CONNECT_TIMEOUT", 5.0)
# How Triton's streams are read: "aio" (grpc.aio, one event-loop wake-up per message) or
# "thread" (a thread per stream hands the loop batches; pays only when the loop is the
# bottleneck: docs/performance.md, "Streaming capacity").
TRITON_STREAM_READER = env_str("TRITON_STREAM_READER", "aio")
if TRITON_STREAM_READER not in ("aio", "thread"):
    raise ImproperlyConfigured(
        f"TRITON_STREAM_READER={TRITON_STREAM_READER!r} is not one of: aio, thread"
    )
# Seconds between readiness probes of each Triton endpoint (server and models ready); a
# down endpoint is probed four times as often, so it serves again soon after it is ready.
TRITON_PROBE_SECONDS = env_float("TRITON_PROBE_SECONDS", 2.0)
# Seconds between resolutions of Triton host names: a name with several addresses (a
# headless Service) is one endpoint per address, so pods that come and go are picked up.
TRITON_RESOLVE_SECONDS = env_float("TRITON_RESOLVE_SECONDS", 10.0)
# Seconds a model config row is cached per process: how long an admin change takes to apply.
MODEL_CACHE_SECONDS = env_float("MODEL_CACHE_SECONDS", 1.0)
# Web pages (origins) whose scripts may call the API from a browser, as OpenAI's API allows
# (the SDKs' dangerouslyAllowBrowser): "*" for any, a comma-separated list, or empty for
# none. Keys travel in the Authorization header, never in cookies, so no credentials mode.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", ["*"])
# /docs (Swagger UI) and /openapi.json. On by default only with DEBUG: the document
# describes every route, which a production deployment may prefer not to publish.
DOCS_ENABLED = env_bool("DOCS_ENABLED", DEBUG)
# GET /metrics, Prometheus's format, open without a key like /health (llmgateway/metrics.py).
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
# When set, /metrics asks for it as a bearer token (Prometheus's `authorization` setting).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# The managed platform (accounts/): API keys on every inference route, per-key quotas,
# request logs. Off only to measure the bare gateway (the bench's comparison).
GATEWAY_PLATFORM = env_bool("GATEWAY_PLATFORM", True)
# Keyed hash for API-key secrets. Unset: derived from SECRET_KEY (rotating that then
# invalidates every key; set this to rotate SECRET_KEY independently).
API_KEY_PEPPER = env_str("API_KEY_PEPPER", "")
# Seconds a key lookup is cached per process: revocation reaches every replica within it.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 1.0)
# Seconds before a quota reservation whose request never settled (its process died) is
# released. Must exceed the longest request, so it follows the request deadline.
QUOTA_LEASE_SECONDS = env_float("QUOTA_LEASE_SECONDS", GATEWAY_REQUEST_TIMEOUT + 30.0)
# Send a request to Triton while its quota reservation is in flight, for keys whose last
# request was admitted (accounts.admission.EarlyStarts): saves the quota store's round
# trip. Off: nothing reaches Triton before it is admitted.
QUOTA_EARLY_START = env_bool("QUOTA_EARLY_START", True)
# The currency of every model price and money budget (lowercase ISO 4217, as OpenAI's
# Costs API reports it).
GATEWAY_CURRENCY = env_str("GATEWAY_CURRENCY", "usd").lower()
# Budget alert webhooks (accounts/alerts.py): tries per alert, the first wait between
# tries (doubling after each), and seconds per try. The receiver must be a public address
# unless VISION_ALLOWED_HOSTS / VISION_ALLOWED_NETWORKS list it (the image-fetch rules).
BUDGET_ALERT_ATTEMPTS = env_int("BUDGET_ALERT_ATTEMPTS", 5)
BUDGET_ALERT_RETRY_SECONDS = env_float("BUDGET_ALERT_RETRY_SECONDS", 2.0)
BUDGET_ALERT_TIMEOUT = env_float("BUDGET_ALERT_TIMEOUT", 10.0)
# The Admin API's ceilings for a project's per-model rate limits (what an unset limit
# reads as in /v1/organization/projects/{id}/rate_limits; higher values are refused).
ADMIN_API_MAX_RPM = env_int("ADMIN_API_MAX_RPM", 1_000_000)
ADMIN_API_MAX_TPM = env_int("ADMIN_API_MAX_TPM", 10_000_000_000)
# Store prompt and response text in request logs (off: token counts and metadata only).
REQUEST_LOG_CONTENT = env_bool("REQUEST_LOG_CONTENT", False)
# Days of request logs `prunerequestlogs` keeps.
REQUEST_LOG_RETENTION_DAYS = env_int("REQUEST_LOG_RETENTION_DAYS", 30)
# Days a stored /v1/responses answer (store: true) can be read back or continued;
# `pruneresponses` deletes older ones. Stored only with REQUEST_LOG_CONTENT on.
RESPONSES_RETENTION_DAYS = env_int("RESPONSES_RETENTION_DAYS", 30)
# With Redis: how long the request-log outbox collects records before a gateway writes
# them to the database in one INSERT (rows appear up to this late in the admin).
REQUEST_LOG_DRAIN_SECONDS = env_float("REQUEST_LOG_DRAIN_SECONDS", 1.0)
# Where a gateway keeps settlements and request logs it could not write while the
# database (or Redis) was out, until it can (accounts/quota/spool.py). Must survive a
# restart of the gateway (a volume in a container) and be local to it.
GATEWAY_SPOOL_DIR = env_str("GATEWAY_SPOOL_DIR", str(BASE_DIR / "var" / "spool"))
# On a graceful stop, how long to wait for settlements and request-log writes still
# running after their responses were sent (llmgateway/background.py).
GATEWAY_SHUTDOWN_SECONDS = env_float("GATEWAY_SHUTDOWN_SECONDS", 10.0)

try:
    LOGGING = logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if not LOG_ACCESS:
    LOGGING["loggers"]["llmgateway.access"] = {"level": "WARNING"}

# The admin's middleware runs inside admin_middleware (not in MIDDLEWARE itself), which
# these checks cannot see. tests/accounts/test_admin.py and test_admin_browser.py prove
# the admin still works. security.W001-W003 and axes.W002 likewise: llmgateway/checks.py
# asks the same of ADMIN_MIDDLEWARE under `check --deploy`.
SILENCED_SYSTEM_CHECKS = [
    "admin.E408",
    "admin.E409",
    "admin.E410",
    "security.W001",
    "security.W002",
    "security.W003",
    "axes.W002",
]

# ---- Vision (Qwen-VL images; llmgateway/vision/) ------------------------------------------
# Most images one request may carry (each costs image_tokens prompt positions).
VISION_MAX_IMAGES = env_int("VISION_MAX_IMAGES", 8)
# Largest encoded image accepted, from a URL, a data: URL or a file, in bytes.
VISION_MAX_IMAGE_BYTES = env_int("VISION_MAX_IMAGE_BYTES", 10 * 1024 * 1024)
# Largest decoded image in pixels (width × height): a guard against decompression bombs.
VISION_MAX_PIXELS = env_int("VISION_MAX_PIXELS", 40_000_000)
# Whether http(s) image URLs are fetched at all.
VISION_FETCH_ENABLED = env_bool("VISION_FETCH_ENABLED", True)
# Seconds for one image fetch in total: resolving, connecting, redirects and the body.
VISION_FETCH_TIMEOUT = env_float("VISION_FETCH_TIMEOUT", 10.0)
VISION_MAX_REDIRECTS = env_int("VISION_MAX_REDIRECTS", 3)
# Image URLs may only reach public addresses, except hosts ("name" or "name:port") and
# networks (CIDR) listed here, e.g. an internal image store. Loopback, private,
# link-local and metadata addresses stay refused unless listed.
VISION_ALLOWED_HOSTS = env_list("VISION_ALLOWED_HOSTS", [])
VISION_ALLOWED_NETWORKS = env_list("VISION_ALLOWED_NETWORKS", [])
# Directory local image paths may be read from; empty (the default) refuses every path.
VISION_LOCAL_DIR = env_str("VISION_LOCAL_DIR", "")
for _network in VISION_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"VISION_ALLOWED_NETWORKS: {_network!r} is not a CIDR") from None
