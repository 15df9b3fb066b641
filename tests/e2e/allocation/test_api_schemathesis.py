"""Schemathesis against a live server: every check, a fixed seed, a bounded run."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)
EXAMPLES = 25  # per operation and phase


def test_the_api_keeps_to_its_schema_under_schemathesis(live_server):
    user = User.objects.create_superuser("fuzzer", "fuzzer@example.com", "x")
    token = Token.objects.create(user=user)
    st = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [
            str(st), "--config-file", str(ROOT / "schemathesis.toml"),
            "run", f"{live_server.url}/api/schema/",
            "--checks", "all", "--seed", "1", "--max-examples", str(EXAMPLES),
            "--header", f"Authorization: Token {token.key}", "--no-color",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "12/12" in done.stdout  # every operation ran
