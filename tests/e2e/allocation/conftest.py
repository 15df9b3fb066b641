from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.factories import UserFactory

WRITE_PERMISSIONS = ["add_batch", "change_batch", "add_orderline"]


@pytest.fixture
def clerk(db: None) -> User:
    """A user who may add and change batches and allocate order lines."""
    return UserFactory(permissions=WRITE_PERMISSIONS)


@pytest.fixture
def api(clerk: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(clerk)
    return client


@pytest.fixture
def after_commit(django_capture_on_commit_callbacks: Any) -> Callable[[], Any]:
    """``with after_commit():`` runs the event handlers the block's commits would run."""
    return lambda: django_capture_on_commit_callbacks(execute=True)
