"""The project's settings plus a small app that exercises the bus."""

import json
import os
import uuid

import django

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key")

from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.busapp"]  # noqa: F405

# A second alias on the same database, for tests of what lives on which database.
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}  # noqa: F405

MESSAGEBUS = {
    **MESSAGEBUS,  # noqa: F405
    "RETRY_WAIT": 0,
    "RETRY_WAIT_MAX": 0,
    "SWEEP_INTERVAL": 0,
    # Worker subprocesses in crash tests lose their leases in seconds, not minutes.
    "CLAIM_TIMEOUT": float(os.environ.get("BUSAPP_CLAIM_TIMEOUT", "300")),
    "DEPENDENCIES": {**MESSAGEBUS["DEPENDENCIES"], "clock": "tests.busapp.services.Clock"},  # noqa: F405
    # Periodic schedules of worker subprocesses (tests/integration/messagebus/test_scheduling.py).
    "SCHEDULES": json.loads(os.environ.get("BUSAPP_SCHEDULES", "{}")),
    # Off, but in the tests of traces (tests/e2e/allocation/test_tracing.py), which set
    # the SDK's tracer provider: once set, it stays for the rest of the run. On in a
    # Celery worker subprocess whose spans go to a file (tests/traced.py).
    "TRACING": bool(os.environ.get("BUSAPP_TRACES_FILE")),
}

# Tests run with DEBUG off (as Django's test runner forces) and without collectstatic:
# the manifest storage would fail every page with {% static %} on a missing manifest entry,
# so templates get plain URLs, and whitenoise serves the apps' files as it does under DEBUG.
# tests/e2e/test_static_files.py collects and serves with the production storage.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
API_ALLOW_ANONYMOUS = False
# Throttles and the login lockout are off, but in their own tests (tests/e2e/test_throttling.py).
REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_RATES": {"anon": None, "user": None},
}
AXES_ENABLED = False
LOGGING["root"]["level"] = os.environ.get("LOG_LEVEL", "WARNING")  # noqa: F405

# Celery tests send to a queue of this test run's own (their worker subprocesses
# inherit the name), which RabbitMQ deletes after ten idle minutes.
CELERY_TASK_DEFAULT_QUEUE = os.environ.setdefault(
    "BUSAPP_CELERY_QUEUE", f"messagebus-tests-{uuid.uuid4().hex[:8]}"
)
CELERY_TASK_QUEUES = {CELERY_TASK_DEFAULT_QUEUE: {"queue_arguments": {"x-expires": 600_000}}}
