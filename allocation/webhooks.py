"""Allocations POSTed as JSON to the URLs in ALLOCATION_WEBHOOK_URLS, with httpx.

Delivery is at least once: a run that fails for one URL posts to all of them
again, so each request carries the event's id as ``Idempotency-Key`` for the
receiver to drop repeats by.
"""

from __future__ import annotations

import anyio
import httpx

TIMEOUT = 10.0  # seconds to connect, and between bytes of the answer


class WebhookFailed(Exception):
    """A URL answered other than 2xx, or could not be reached: the delivery is retried."""


async def post_to_all(urls: list[str], body: dict[str, object], key: str) -> None:
    """POST ``body`` to every URL at once; WebhookFailed naming each that failed."""
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:

        async def post(url: str) -> None:
            try:
                response = await client.post(url, json=body, headers={"Idempotency-Key": key})
            except Exception as exc:  # noqa: BLE001  (each URL's failure named, none lost)
                failures.append(f"{url}: {type(exc).__name__}: {exc or 'no answer'}")
                return
            if not response.is_success:
                failures.append(f"{url} answered {response.status_code}")

        async with anyio.create_task_group() as group:
            for url in urls:
                group.start_soon(post, url)
    if failures:
        raise WebhookFailed("; ".join(failures))
