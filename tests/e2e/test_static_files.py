"""Static files as production serves them: collected, hashed, compressed, served by whitenoise.

The suite's settings keep plain storage (see tests/settings.py); here the production
storage from config/settings.py collects into a temporary STATIC_ROOT, and whitenoise
serves it with DEBUG off, as it does under gunicorn.
"""

import gzip
import re
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.management import call_command
from django.test import Client, override_settings
from whitenoise.storage import CompressedManifestStaticFilesStorage

from config import settings as project_settings
from config.storage import StaticFilesStorage

# Each request runs Django's request_started/finished handlers, which look at the connection.
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def static_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("staticfiles")
    production = override_settings(
        DEBUG=False,
        STATIC_ROOT=root,
        STORAGES=project_settings.STORAGES,
        WHITENOISE_USE_FINDERS=False,
        WHITENOISE_AUTOREFRESH=False,
    )
    with production:
        call_command("collectstatic", "--noinput", verbosity=0)
        yield root


def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Fetch through a new client (whitenoise reads its settings when it starts)."""
    response = Client().get(path, headers=headers)
    try:
        body = b"".join(response.streaming_content) if response.streaming else response.content
    finally:
        response.close()
    return response.status_code, dict(response.headers), body


def test_production_uses_whitenoise_manifest_storage():
    assert project_settings.STORAGES["staticfiles"]["BACKEND"] == (
        "config.storage.StaticFilesStorage"
    )
    assert issubclass(StaticFilesStorage, CompressedManifestStaticFilesStorage)
    assert project_settings.MIDDLEWARE[:2] == [
        "django.middleware.security.SecurityMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
    ]


def test_admin_css_is_served_from_static_root_with_debug_off(static_root):
    status, headers, body = get("/static/admin/css/base.css")

    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert body == (static_root / "admin" / "css" / "base.css").read_bytes()


def test_hashed_names_are_cached_forever_and_compressed(static_root):
    url = staticfiles_storage.url("admin/css/base.css")
    assert re.fullmatch(r"/static/admin/css/base\.[0-9a-f]{12}\.css", url)

    status, headers, body = get(url, accept_encoding="gzip")

    assert status == 200
    assert "immutable" in headers["Cache-Control"]
    assert headers["Content-Encoding"] == "gzip"
    assert b"body" in gzip.decompress(body)


def test_admin_pages_link_the_collected_css(static_root):
    status, _, body = get("/admin/login/")

    assert status == 200
    assert staticfiles_storage.url("admin/css/base.css").encode() in body


# Each page of API docs, and a script it cannot work without.
API_DOCS = {"/api/docs/": "swagger-ui-bundle", "/api/redoc/": "redoc.standalone"}


@pytest.mark.parametrize(("page", "script"), API_DOCS.items())
def test_api_docs_load_from_local_static_files_only(static_root, page, script):
    status, _, body = get(page)
    html = body.decode()

    assert status == 200
    assert not re.search(r"https?://|//cdn", html), "the docs page names another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(script in url for url in assets)
    for url in assets:
        assert url.startswith("/static/drf_spectacular_sidecar/"), url
        assert not urlsplit(url).netloc


@pytest.mark.parametrize(("page", "script"), API_DOCS.items())
def test_api_docs_assets_are_served(static_root, page, script):
    _, _, body = get(page)
    assets = re.findall(r'(?:src|href)="([^"]+)"', body.decode())

    for url in assets:
        status, headers, content = get(url)
        assert status == 200, url
        assert content, url
    bundle = next(url for url in assets if script in url)
    status, headers, content = get(bundle)
    assert "javascript" in headers["Content-Type"]
    assert content.strip()


@pytest.mark.parametrize("page", ["/admin/login/", "/api/docs/", "/api/redoc/"])
def test_before_collectstatic_pages_name_the_apps_files_and_they_are_served(page, tmp_path, caplog):
    never_collected = override_settings(
        DEBUG=False,
        STATIC_ROOT=tmp_path,
        STORAGES=project_settings.STORAGES,
        WHITENOISE_USE_FINDERS=True,  # as settings.py sets it while there is no manifest
        WHITENOISE_AUTOREFRESH=False,
    )
    with never_collected:
        status, _, body = get(page)
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', body.decode())

        assert status == 200
        assert assets
        for url in assets:
            assert get(url)[0] == 200, url
    assert "Run `python manage.py collectstatic --noinput`" in caplog.text
