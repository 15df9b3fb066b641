"""The project's settings plus a small app that exercises the bus."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key")

from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.busapp"]  # noqa: F405

MESSAGEBUS = {
    "EXECUTOR": "inline",
    "RETRY_WAIT": 0,
    "RETRY_WAIT_MAX": 0,
    "DEPENDENCIES": {
        "clock": "tests.busapp.services.Clock",
        "notifications": "allocation.notifications.EmailNotifications",
    },
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
API_ALLOW_ANONYMOUS = False
REST_FRAMEWORK = {**REST_FRAMEWORK, "TEST_REQUEST_DEFAULT_FORMAT": "json"}  # noqa: F405
LOGGING["root"]["level"] = os.environ.get("LOG_LEVEL", "WARNING")  # noqa: F405
