"""The project's settings on the Django installed: nothing in them is deprecated there."""

from __future__ import annotations

import warnings

import pytest
from django.conf import Settings


@pytest.mark.parametrize("module", ["config.settings", "tests.settings"])
def test_the_settings_use_no_setting_this_django_deprecates(module):
    # Django warns as it reads a settings module (EMAIL_BACKEND from 6.1: MAILERS instead),
    # from its own frames, which the warning filters of pyproject.toml do not reach.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Settings(module)
    deprecations = (DeprecationWarning, PendingDeprecationWarning)
    assert [str(w.message) for w in caught if issubclass(w.category, deprecations)] == []
