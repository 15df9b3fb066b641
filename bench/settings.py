"""The project's settings for the HTTP benchmark: its routes plus a bare view."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-secret-key")

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
ALLOWED_HOSTS = ["127.0.0.1"]
API_ALLOW_ANONYMOUS = True
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# The bare view runs the domain outside a unit of work on purpose: no warning per request.
LOGGING["loggers"]["messagebus.handling.unit_of_work"] = {"level": "ERROR"}  # noqa: F405
# Nothing static is served here, and nothing was collected: no scan of STATIC_ROOT.
WHITENOISE_AUTOREFRESH = True
