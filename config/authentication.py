"""The lockout of repeated failed logins (django-axes), switched by ``AXES_ENABLED``."""

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest


class LoginLockoutBackend(AxesStandaloneBackend):  # type: ignore[misc]  # axes has no types
    """django-axes' backend, which stands aside while ``AXES_ENABLED`` is off (THROTTLING=0:
    the local demo, the tests), even for a caller that passes no request."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Raise ``AxesBackendPermissionDenied`` for a locked-out login; else let the
        next backend decide (this one never authenticates anybody)."""
        if settings.AXES_ENABLED:
            super().authenticate(request, username, password, **kwargs)
