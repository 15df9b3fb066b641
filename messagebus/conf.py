"""The MESSAGEBUS setting, read on every access so override_settings works.

MESSAGEBUS = {
    "EXECUTOR": "inline",        # "inline", "worker", or a dotted path
    "DEPENDENCIES": {},          # handler parameter name -> factory path
    "RETRY_ATTEMPTS": 3,         # tries within one run (tenacity)
    "RETRY_WAIT": 0.5,           # first wait between tries, doubling
    "RETRY_WAIT_MAX": 10.0,      # longest wait between tries
    "MAX_DELIVERIES": 5,         # runs before a delivery is dead
    "REDELIVERY_DELAY": 30.0,    # first delay before another run, doubling
    "REDELIVERY_DELAY_MAX": 3600.0,
    "CLAIM_TIMEOUT": 300.0,      # seconds a claimed delivery stays ours
    "SWEEP_INTERVAL": 60.0,      # inline: take on overdue deliveries this often (0: never)
    "WORKER_POLL_INTERVAL": 1.0, # seconds a worker sleeps when idle
}
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from django.conf import settings as django_settings

T = TypeVar("T")

DEFAULTS: dict[str, Any] = {
    "EXECUTOR": "inline",
    "DEPENDENCIES": {},
    "RETRY_ATTEMPTS": 3,
    "RETRY_WAIT": 0.5,
    "RETRY_WAIT_MAX": 10.0,
    "MAX_DELIVERIES": 5,
    "REDELIVERY_DELAY": 30.0,
    "REDELIVERY_DELAY_MAX": 3600.0,
    "CLAIM_TIMEOUT": 300.0,
    "SWEEP_INTERVAL": 60.0,
    "WORKER_POLL_INTERVAL": 1.0,
}


class Settings:
    """Typed, lazy access to MESSAGEBUS; validated by the system checks."""

    @property
    def raw(self) -> dict[str, Any]:
        value = getattr(django_settings, "MESSAGEBUS", {})
        return value if isinstance(value, dict) else {}

    def _get(self, key: str, kind: type[T]) -> T:
        return cast(T, self.raw.get(key, DEFAULTS[key]))

    @property
    def EXECUTOR(self) -> str:
        return self._get("EXECUTOR", str)

    @property
    def DEPENDENCIES(self) -> dict[str, str]:
        return self._get("DEPENDENCIES", dict)

    @property
    def RETRY_ATTEMPTS(self) -> int:
        return self._get("RETRY_ATTEMPTS", int)

    @property
    def RETRY_WAIT(self) -> float:
        return self._get("RETRY_WAIT", float)

    @property
    def RETRY_WAIT_MAX(self) -> float:
        return self._get("RETRY_WAIT_MAX", float)

    @property
    def MAX_DELIVERIES(self) -> int:
        return self._get("MAX_DELIVERIES", int)

    @property
    def REDELIVERY_DELAY(self) -> float:
        return self._get("REDELIVERY_DELAY", float)

    @property
    def REDELIVERY_DELAY_MAX(self) -> float:
        return self._get("REDELIVERY_DELAY_MAX", float)

    @property
    def CLAIM_TIMEOUT(self) -> float:
        return self._get("CLAIM_TIMEOUT", float)

    @property
    def SWEEP_INTERVAL(self) -> float:
        return self._get("SWEEP_INTERVAL", float)

    @property
    def WORKER_POLL_INTERVAL(self) -> float:
        return self._get("WORKER_POLL_INTERVAL", float)


settings = Settings()
