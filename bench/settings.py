"""The project's settings for the HTTP benchmark: its routes plus a bare view."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-secret-key")

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
ALLOWED_HOSTS = ["127.0.0.1"]
API_ALLOW_ANONYMOUS = True
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
