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
