"""The project's Celery app: ``celery -A config worker`` runs the bus's deliveries.

Its settings are Django's ``CELERY_*`` ones (config/settings.py); the tasks
are found in the installed apps (``messagebus.tasks``).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
