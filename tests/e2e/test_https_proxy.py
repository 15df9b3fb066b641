"""Behind an HTTPS proxy, as the production variables of docs/production.md configure it."""

import re
import secrets

from django.contrib.auth.models import User

from tests.conftest import ROOT

LOGIN = """
import re
from django.test import Client

client = Client(enforce_csrf_checks=True)
proxied = {"Host": "shop.example.com", "X-Forwarded-Proto": "https"}
page = client.get("/admin/login/", headers=proxied)
token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
answer = client.post(
    "/admin/login/?next=/admin/",
    {"csrfmiddlewaretoken": token, "username": "alice", "password": "s3cret-enough"},
    headers={**proxied, "Origin": "https://shop.example.com", "Referer": "https://shop.example.com/admin/login/"},
)
print(answer.status_code, answer.get("Location", ""), answer.get("Strict-Transport-Security", ""))
"""


def production_variables() -> dict[str, str]:
    """The variables of docs/production.md's "Behind an HTTPS proxy" block; a fresh secret key."""
    page = (ROOT / "docs" / "production.md").read_text()
    block = re.search(r"Behind an HTTPS proxy.*?```sh\n(.*?)```", page, re.DOTALL)
    assert block, "docs/production.md's block of production variables"
    found = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", block[1]))
    assert found.pop("DJANGO_SECRET_KEY").startswith('"$(')  # a command that makes one
    return {**found, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_DEBUG": "0"}


def test_check_deploy_is_clean_with_the_documented_production_variables(manage):
    variables = production_variables()
    assert {"DJANGO_SECURE_PROXY_SSL_HEADER", "DJANGO_CSRF_TRUSTED_ORIGINS"} <= set(variables)

    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        env={**variables, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_admin_login_through_the_proxy_signs_in(manage):
    User.objects.create_superuser("alice", "alice@example.com", "s3cret-enough")
    host = {"DJANGO_ALLOWED_HOSTS": "shop.example.com"}

    unconfigured = manage("shell", "-c", LOGIN, env=host)
    configured = manage("shell", "-c", LOGIN, env={**production_variables(), **host})

    assert unconfigured.stdout.splitlines()[-1].split()[0] == "403", unconfigured.stderr
    status, location, hsts = configured.stdout.splitlines()[-1].split(maxsplit=2)
    assert (status, location) == ("302", "/admin/"), configured.stderr
    assert hsts.startswith("max-age=")
