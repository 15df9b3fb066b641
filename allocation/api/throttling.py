"""The API's throttles: DRF's, with rates read on each request.

DRF's own read ``DEFAULT_THROTTLE_RATES`` once, as the class is defined; these
ask its settings each time, so a rate of None (THROTTLING off: the local demo,
the tests) lets everything through, and ``override_settings`` turns them on.
A throttled request is a 429 with ``Retry-After`` and ``{"message": ...}``.
A refused token counts against the anonymous rate before its 401 (``authenticate``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.exceptions import AuthenticationFailed
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

if TYPE_CHECKING:  # DRF's views import this module, through DEFAULT_THROTTLE_CLASSES
    from rest_framework.request import Request
    from rest_framework.views import APIView


def rate(scope: str | None) -> str | None:
    """The rate of ``scope`` in REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], as it is now."""
    value = api_settings.DEFAULT_THROTTLE_RATES.get(scope or "")
    return None if value is None else str(value)


class AnonThrottle(AnonRateThrottle):
    """Requests without a user, counted by address (rate ``"anon"``)."""

    def get_rate(self) -> str | None:
        return rate(self.scope)


class UserThrottle(UserRateThrottle):
    """Requests of a signed-in user, counted by user (rate ``"user"``)."""

    def get_rate(self) -> str | None:
        return rate(self.scope)


def authenticate(view: APIView, request: Request) -> None:
    """Authenticate ``request``; a refused credential (a wrong token, say) counts as an
    anonymous request, so that guessing tokens is throttled like one: a 429, not a 401,
    once the anonymous rate is spent."""
    try:
        request.user  # noqa: B018  (DRF authenticates on first access)
    except AuthenticationFailed:
        throttle = AnonThrottle()
        if not throttle.allow_request(request, view):
            view.throttled(request, throttle.wait() or 1.0)
        raise
