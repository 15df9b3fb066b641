"""Brute force is not free: the API throttles (429, Retry-After) and failed admin logins
lock a username out (django-axes). Both are on in production, off in the demo and tests."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.conftest import ROOT
from tests.factories import UserFactory

RATES = {"anon": "5/minute", "user": "8/minute"}


@pytest.fixture(autouse=True)
def fresh_counts():
    cache.clear()
    yield
    cache.clear()


def throttled(rates: dict[str, str | None] = RATES):
    return override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    )


def guess_tokens(times: int) -> list:
    client = APIClient()
    responses = []
    for guess in range(times):
        client.credentials(HTTP_AUTHORIZATION=f"Token guess-{guess}")
        responses.append(client.get("/api/batches"))
    return responses


@pytest.mark.django_db
def test_guessing_tokens_is_throttled_with_a_429_retry_after_and_a_message():
    with throttled():
        responses = guess_tokens(30)

    assert [r.status_code for r in responses] == [401] * 5 + [429] * 25
    last = responses[-1]
    assert 0 < int(last.headers["Retry-After"]) <= 60
    assert last.json() == {
        "message": f"Request was throttled. Expected available in {last.headers['Retry-After']} "
        "seconds."
    }


@pytest.mark.django_db
def test_a_signed_in_user_has_a_rate_of_its_own():
    token = Token.objects.create(user=UserFactory())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    with throttled():
        codes = [client.get("/api/batches").status_code for _ in range(10)]
    assert codes == [200] * 8 + [429] * 2


@pytest.mark.django_db
def test_anonymous_requests_are_throttled(settings):
    settings.API_ALLOW_ANONYMOUS = True
    with throttled():
        codes = [APIClient().get("/api/batches").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2


@pytest.mark.django_db
def test_off_in_the_tests_and_the_demo_a_rate_of_none_lets_everything_through():
    assert [r.status_code for r in guess_tokens(30)] == [401] * 30


def log_in(client, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": "alice", "password": password})


@pytest.mark.django_db
def test_repeated_failed_admin_logins_lock_the_username_out(client):
    UserFactory(username="alice", is_staff=True, is_superuser=True)
    with override_settings(AXES_ENABLED=True):
        failures = [log_in(client, "wrong").status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
        locked = log_in(client, "secret")  # the right password, too late

    assert failures[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)  # the form, with its error
    assert failures[-1] == locked.status_code == 429
    assert b"too many" in locked.content.lower()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_successful_login_before_the_limit_starts_the_count_again(client):
    UserFactory(username="alice", is_staff=True, is_superuser=True)
    with override_settings(AXES_ENABLED=True):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            log_in(client, "wrong")
        assert log_in(client, "secret").status_code == 302
        client.logout()
        assert log_in(client, "wrong").status_code == 200


@pytest.mark.django_db
def test_off_in_the_tests_failed_logins_never_lock_anybody_out(client):
    UserFactory(username="alice", is_staff=True, is_superuser=True)
    for _ in range(settings.AXES_FAILURE_LIMIT + 3):
        assert log_in(client, "wrong").status_code == 200
    assert log_in(client, "secret").status_code == 302


SHOW = (
    "import json; from config import settings as s; print(json.dumps([s.THROTTLING, "
    "s.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'], s.AXES_ENABLED]))"
)


def project_settings(**env: str) -> list:
    """What config.settings makes of this environment (and no other of ours)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_DEBUG", "THROTTLING")}
    done = subprocess.run(
        [sys.executable, "-c", SHOW], env={**clean, "DJANGO_SECRET_KEY": "x", **env},
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_on_in_production_off_in_the_local_demo():
    on = {"anon": "60/minute", "user": "600/minute"}
    assert project_settings() == [True, on, True]  # as the README's production runs it
    assert project_settings(API_THROTTLE_ANON="10/second") == [
        True, {**on, "anon": "10/second"}, True,
    ]  # fmt: skip
    off = [False, {"anon": None, "user": None}, False]
    assert project_settings(DJANGO_DEBUG="1", API_ALLOW_ANONYMOUS="1", THROTTLING="0") == off
    assert project_settings(DJANGO_DEBUG="1") == off  # make run, the README's uvicorn demo
