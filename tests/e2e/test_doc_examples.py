"""Every example of the README and docs/ runs, read by Sybil as a reader reads the page.

- ``python`` blocks run in one namespace per page, in order, with handlers registered
  in a temporary registry (an ``invisible-code-block`` comment may set up what a block
  assumes), and the handlers they register pass ``manage.py check``;
- ``sh`` blocks run in bash (``set -eu -o pipefail``) from the checkout, with this
  environment's ``python`` first on the PATH, the test database, and ``DJANGO_DEBUG=1``
  as the pages ask. A block that names ``http://127.0.0.1:8000`` gets a server as
  ``make run`` starts it (demo data, anonymous API), on a free port its ``curl`` is
  pointed at; ``curl`` fails on an HTTP error;
- a block the page marks ``<!-- skip: next "reason" -->`` (it starts a server, is the
  suite itself, needs the network) is not run: the reason names the test that runs what
  it does, or begins with "needs".

Examples included from files (``{literalinclude}``) are run by the tests of those files
(docs/examples: tests/e2e/messagebus/test_example_app.py, test_book_commands.py).
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from unittest import SkipTest

import pytest
from django.core.checks import run_checks
from sybil import Example, Sybil
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

import messagebus
from tests.conftest import ROOT, database_url
from tests.subprocesses import Watched

PAGES = ["README.md", *(p.relative_to(ROOT).as_posix() for p in sorted(ROOT.glob("docs/*.md")))]
DEMO_URL = "http://127.0.0.1:8000"
# curl as the pages write it, sent to the test's server, failing on an HTTP error.
PREAMBLE = """set -eu -o pipefail
curl() {
    command curl --silent --show-error --fail-with-body "${@//127.0.0.1:8000/127.0.0.1:$DEMO_PORT}"
}
"""


def run_shell(example: Example) -> None:
    env = example.namespace["environment"](needs_server=DEMO_URL in example.parsed)
    shell = subprocess.Popen(
        ["bash", "-c", PREAMBLE + example.parsed],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a timeout stops whatever it started too
    )
    try:
        out, err = shell.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        out, err = shell.communicate()
        raise AssertionError(f"still running after 60 s (a server?)\n{out}\n{err}") from None
    assert shell.returncode == 0, f"exit status {shell.returncode}\n{out[-2000:]}\n{err[-2000:]}"


SYBIL = Sybil(
    parsers=[
        PythonCodeBlockParser(),
        CodeBlockParser(language="sh", evaluator=run_shell),
        SkipParser(),
    ],
    path=str(ROOT),
)


class Demo:
    """``make run``'s server on the test database, started when a page first needs it."""

    def __init__(self) -> None:
        self.server: Watched | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MESSAGEBUS_")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url(),
            "DJANGO_DEBUG": "1",
            "API_ALLOW_ANONYMOUS": "1",
            "THROTTLING": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def environment(self, *, needs_server: bool) -> dict[str, str]:
        if needs_server and self.server is None:
            python = sys.executable
            subprocess.run(
                [python, "manage.py", "load_demo_data"], cwd=ROOT, env=self.env, check=True,
                capture_output=True,
            )  # fmt: skip
            self.env["DEMO_PORT"] = str(free_port())
            address = f"127.0.0.1:{self.env['DEMO_PORT']}"
            self.server = Watched(
                [python, "manage.py", "runserver", address, "--noreload"],
                env=self.env,
                ready="Quit the server",
                what="the demo",
            )
        return self.env

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skip_reasons(page: str) -> list[tuple[int, str]]:
    text = (ROOT / page).read_text()
    return [
        (text[: match.start()].count("\n") + 1, match.group(1))
        for match in re.finditer(r'<!-- skip: next "([^"]*)" -->', text)
    ]


@pytest.mark.parametrize("page", PAGES)
def test_every_example_of_the_page_runs(page, transactional_db):
    document = SYBIL.parse(ROOT / page)
    demo = Demo()
    document.namespace["environment"] = demo.environment
    skipped = 0
    try:
        with messagebus.registry.temporary():
            for example in document:
                try:
                    example.evaluate()
                except SkipTest:
                    skipped += 1
                    continue
                except Exception as exc:
                    raise AssertionError(f"{page}, line {example.line}: {exc}") from exc
            # The handlers the page registered pass the checks a project's would.
            errors = [e for e in run_checks(tags=["messagebus"]) if e.is_serious()]
            assert not errors, f"{page}: {errors}"
    finally:
        demo.stop()
    # Each skip is one example not run (and one skip directive evaluated).
    assert skipped == len(skip_reasons(page)), "a skip directive Sybil did not read"


@pytest.mark.parametrize("page", PAGES)
def test_an_example_not_run_says_which_test_runs_it(page):
    for line, reason in skip_reasons(page):
        named = re.findall(r"tests/[\w/]+\.py", reason)
        assert named or reason.startswith("needs"), f"{page}, line {line}: {reason!r}"
        for path in named:
            assert (ROOT / path).is_file(), f"{page}, line {line}: no {path}"


def test_the_pages_have_examples_to_run():
    examples = {page: list(SYBIL.parse(ROOT / page)) for page in PAGES}

    assert len(examples["README.md"]) >= 3
    assert all(examples[f"docs/{name}.md"] for name in ("guide", "service", "book", "delivery"))
