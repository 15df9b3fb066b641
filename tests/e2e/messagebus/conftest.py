"""The wheel of ``messagebus``, built once for the tests that install it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".hypothesis",
    ".*_cache",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    "build",
    "dist",
    "staticfiles",
    "*.sqlite3*",
)

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def run(*args: str | Path, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None):
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip install .`` would build, built from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run(
        *PIP,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        "dist",
        source,
        cwd=tmp,
    )
    [built] = (tmp / "dist").glob("*.whl")
    return built
