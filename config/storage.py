"""Static files storage: collectstatic's hashed, compressed copies, or the apps' own files
until the first collectstatic.

Whitenoise's manifest storage fails every page that names a static file when the manifest
was never built (``ValueError: Missing staticfiles manifest entry``): a 500 for the admin and
the API docs on a fresh deploy. This one names the files as they are in the apps instead, and
says once, in the log, what to run; settings.py lets whitenoise serve them from the apps.
"""

from __future__ import annotations

import logging

from whitenoise.storage import CompressedManifestStaticFilesStorage

logger = logging.getLogger(__name__)


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed names from the manifest; plain names (and a warning) when there is none."""

    _warned = False

    def stored_name(self, name: str) -> str:
        if self.hashed_files:
            return str(super().stored_name(name))
        if not self._warned:
            self._warned = True
            logger.warning(
                "No static files manifest at %s: serving the apps' files unhashed and "
                "uncached. Run `python manage.py collectstatic --noinput` before starting.",
                self.path(self.manifest_name),
            )
        return name
