"""One version: ``messagebus.__version__``, which the distribution's metadata reads (the
built wheel's is checked in tests/e2e/messagebus/test_install.py)."""

import tomllib

import messagebus
from tests.conftest import ROOT


def test_the_distribution_takes_its_version_from_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert "version" not in project["project"]  # not written twice
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "messagebus.__version__"}
    assert messagebus.__version__.count(".") == 2
