"""Settings, read from the environment.

DATABASE_URL        default: a SQLite file beside manage.py; postgres://, mysql:// (MariaDB, MySQL)
DJANGO_SECRET_KEY   required unless DJANGO_DEBUG is on
DJANGO_DEBUG        1/true/yes to enable
DJANGO_ALLOWED_HOSTS comma-separated
DJANGO_SECURE_PROXY_SSL_HEADER the header an HTTPS proxy sets to "https" (e.g. X-Forwarded-Proto)
DJANGO_CSRF_TRUSTED_ORIGINS comma-separated origins forms are posted from (https://host)
DJANGO_HTTPS_ONLY   1/true/yes: cookies only over HTTPS, http redirected to https
DJANGO_HSTS_SECONDS Strict-Transport-Security max-age (default 0: none)
DJANGO_HSTS_INCLUDE_SUBDOMAINS, DJANGO_HSTS_PRELOAD 1/true/yes to add them to the header
MESSAGEBUS_*        read by the bus itself, each key this file leaves out of MESSAGEBUS:
                    MESSAGEBUS_EXECUTOR inline (default), worker or celery;
                    MESSAGEBUS_EXTERNAL_URL where events for other services go (redis://, amqp://)
CELERY_BROKER_URL   the celery executor's broker (default: RabbitMQ on 127.0.0.1:5672)
LOG_LEVEL           root log level (default INFO)
LOG_FORMAT          text (default) or json: one JSON object a line, with message fields
METRICS_ALLOWED_IPS comma-separated addresses or networks GET /metrics answers (none: off)
API_ALLOW_ANONYMOUS 1/true/yes: the API takes requests from anyone (local demo only)
EMAIL_BACKEND       default: print emails to the console
ALLOCATION_STOCK_EMAIL who hears about out-of-stock SKUs (default stock@example.com)
ALLOCATION_WEBHOOK_URLS comma-separated http(s) URLs each allocation is POSTed to
ORDER_CONFIRM_TIMEOUT seconds a placed order waits to be confirmed before its lines are
                    released (default 900)
THROTTLING          API throttles and admin login lockout (default: on, off under DJANGO_DEBUG)
API_THROTTLE_ANON   requests an anonymous client may make (default 60/minute)
API_THROTTLE_USER   requests a signed-in user may make (default 600/minute)
LOGIN_FAILURE_LIMIT failed admin logins before a username is locked out from an address (default 5)
LOGIN_LOCKOUT_MINUTES how long a lockout lasts (default 15)
CACHE_URL           redis://... : the cache the throttles count in, shared by every process
                    (default: each process's memory)
"""

import os
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for local work).")
    SECRET_KEY = "insecure-local-development-key"
THROTTLING = env_bool("THROTTLING", default=not DEBUG)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")

# Behind an HTTPS proxy: trust its header, or every form post (the admin's login) is a 403
# for an Origin of https://... on a request that arrived as http.
if _proxy_header := os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip():
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
_https_only = env_bool("DJANGO_HTTPS_ONLY")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = _https_only
# A load balancer's health probe and Prometheus may ask over plain http, inside the network.
SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "messagebus",
    "allocation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves STATIC_ROOT (collectstatic) so the admin and the API docs are styled under gunicorn.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A web process and a worker share the file: WAL lets readers run beside
    # the writer, IMMEDIATE makes writers queue (busy timeout) instead of
    # failing with "database is locked" when two upgrade to writing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so that tests can start workers in other processes.
    database = Path(DATABASES["default"]["NAME"])
    if database.name != ":memory:":
        DATABASES["default"]["TEST"] = {"NAME": str(database.with_name(f"test_{database.name}"))}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A health check, a worker or a request learns within seconds that the server is gone.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
elif DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    if find_spec("MySQLdb") is None and find_spec("pymysql") is not None:
        # Without mysqlclient, PyMySQL (pure Python) stands in as MySQLdb: it reports a
        # mysqlclient version (version_info) that Django's check of MySQLdb accepts.
        import pymysql

        pymysql.install_as_MySQLdb()
    # READ COMMITTED (Django's default there too): each statement reads what was committed
    # before it, as on PostgreSQL, and InnoDB takes no gap locks, so a claim FOR UPDATE
    # SKIP LOCKED locks only the rows it takes and never holds up an event being stored.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"charset": "utf8mb4", "isolation_level": "read committed", "connect_timeout": 5}
    )
    # The outbox's partial indexes are whole ones there: the claim's still serves it.
    SILENCED_SYSTEM_CHECKS = ["models.W037"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The API's throttles and the login lockout count here: share it between processes in
# production (CACHE_URL=redis://...), or each process counts on its own.
if os.environ.get("CACHE_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["CACHE_URL"],
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # In production: `manage.py collectstatic` writes hashed, compressed copies that
    # whitenoise serves with far-future cache headers. Under DEBUG, runserver serves
    # the apps' files as they are. Before the first collectstatic, pages name the apps'
    # files as they are (config/storage.py) and whitenoise serves them from the apps.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "config.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not (STATIC_ROOT / "staticfiles.json").exists()

# The bus reads each key this leaves out from the environment itself (MESSAGEBUS_EXECUTOR,
# MESSAGEBUS_EXTERNAL_URL for events to other services in allocation/external.py, ...).
MESSAGEBUS: dict[str, Any] = {
    "DEPENDENCIES": {"notifications": "allocation.notifications.EmailNotifications"},
}
if "METRICS_ALLOWED_IPS" in os.environ:
    MESSAGEBUS["METRICS_ALLOWED_IPS"] = env_list("METRICS_ALLOWED_IPS")

# Django's tasks (django.tasks; the django-tasks backport on Django 5.2) in the outbox: a
# task enqueued in a transaction runs only if it commits, on the executor above.
TASKS = {"default": {"BACKEND": "messagebus.task_backend.OutboxBackend"}}

# The celery executor (config/celery.py). The broker's connection timeout bounds how long
# a commit waits on a broker that is down before leaving its deliveries to the relay.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_CONNECTION_TIMEOUT = 1.0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# RabbitMQ confirms each task it has taken: a publish that returns was not lost on the way.
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"confirm_publish": True} if CELERY_BROKER_URL.startswith(("amqp", "pyamqp")) else {}
)
CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "4"))
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # Django's LOGGING stays in charge

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["allocation.api.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "allocation.api.exceptions.exception_handler",
    # Read on each request (allocation.api.throttling): a rate of None does not throttle.
    "DEFAULT_THROTTLE_CLASSES": [
        "allocation.api.throttling.AnonThrottle",
        "allocation.api.throttling.UserThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("API_THROTTLE_ANON", "60/minute") if THROTTLING else None,
        "user": os.environ.get("API_THROTTLE_USER", "600/minute") if THROTTLING else None,
    },
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Allocation service",
    "DESCRIPTION": "Allocate order lines to batches of stock (Architecture Patterns with Python).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_PATCH": False,
    # /api/docs/ loads Swagger UI from this project's static files, not a CDN: it works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
API_ALLOW_ANONYMOUS = env_bool("API_ALLOW_ANONYMOUS")

# Brute force: failed admin logins lock the username out from that address for a while
# (django-axes); the backend must come first, and needs the request (the admin passes it).
AXES_ENABLED = THROTTLING
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AUTHENTICATION_BACKENDS = [
    "config.authentication.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]

_email_backend = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
if django.VERSION >= (6, 1):  # MAILERS replaces EMAIL_BACKEND, which may not be set beside it
    MAILERS = {"default": {"BACKEND": _email_backend}}
else:
    EMAIL_BACKEND = _email_backend
ALLOCATION_STOCK_EMAIL = os.environ.get("ALLOCATION_STOCK_EMAIL", "stock@example.com")
ALLOCATION_WEBHOOK_URLS = env_list("ALLOCATION_WEBHOOK_URLS")
for _url in ALLOCATION_WEBHOOK_URLS:
    try:
        _parts = urlsplit(_url)
        _parts.port  # noqa: B018  (raises ValueError when out of range)
    except ValueError as exc:
        raise ImproperlyConfigured(f"ALLOCATION_WEBHOOK_URLS: {_url!r}: {exc}") from None
    if _parts.scheme not in ("http", "https") or not _parts.hostname:
        raise ImproperlyConfigured(f"ALLOCATION_WEBHOOK_URLS: {_url!r} is not an http(s) URL")

try:
    ORDER_CONFIRM_TIMEOUT = float(os.environ.get("ORDER_CONFIRM_TIMEOUT", "900"))
except ValueError:
    raise ImproperlyConfigured("ORDER_CONFIRM_TIMEOUT: a number of seconds") from None
if not ORDER_CONFIRM_TIMEOUT > 0:
    raise ImproperlyConfigured("ORDER_CONFIRM_TIMEOUT: a number of seconds above 0")

LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "console": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # One JSON object a line, with the message's fields (messagebus.observe.logs) as keys.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    # Every record (a handler's own lines too) gets the fields of the message being handled.
    "filters": {"message": {"()": "messagebus.observe.logs.MessageFields"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "console",
            "filters": ["message"],
        },
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Through the root handler only (Django's own console handler would repeat them).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "INFO"},
    },
}
