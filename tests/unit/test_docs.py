"""The docs (docs/): they build with no warning, the settings reference in them is
generated from messagebus/conf.py, and the README's links into them lead somewhere."""

import ast
import io
import re
import subprocess
import sys
import tokenize
from html.parser import HTMLParser
from pathlib import Path

import pytest

from messagebus import conf
from tests.conftest import ROOT

pytestmark = pytest.mark.docs

DECLARED = list(conf.Settings.declared())


class Page(HTMLParser):
    """A built page's code blocks (their text) and the settings table's rows."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.blocks: list[str] = []
        self.rows: list[list[str]] = []
        self._pre = self._table = self._cell = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "pre":
            self._pre += 1
            self.blocks.append("")
        elif tag == "table" and "messagebus-settings" in classes:
            self._table += 1
        elif self._table and tag == "tr":
            self.rows.append([])
        elif self._table and tag in ("td", "th"):
            self._cell += 1
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre:
            self._pre -= 1
        elif tag == "table" and self._table:
            self._table -= 1
        elif tag in ("td", "th") and self._cell:
            self._cell -= 1

    def handle_data(self, data: str) -> None:
        if self._pre:
            self.blocks[-1] += data
        if self._cell:
            self.rows[-1][-1] += data


@pytest.fixture(scope="module")
def build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``make docs``, into a temporary directory: every page read again (-E)."""
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    return result, out / "html"


@pytest.fixture(scope="module")
def built(build: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    result, html = build
    assert result.returncode == 0, result.stderr
    return html


def settings_block(source: str) -> dict[str, tuple[object, str]]:
    """A ``MESSAGEBUS = {...}`` block: key -> (default, its line's comment)."""
    values = ast.literal_eval(source.split("=", 1)[1].strip())
    comments = {
        token.start[0]: token.string.lstrip("# ").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    found = {}
    for key, value in values.items():
        line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith(f'"{key}"'))
        found[key] = (value, comments.get(line, ""))
    return found


class Refused:
    def __repr__(self) -> str:
        return "<value>"


def test_the_docs_build_without_a_warning(build):
    result, html = build

    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    pages = {path.stem for path in html.glob("*.html")}
    assert {"index", "guide", "delivery", "settings", "external", "production"} <= pages
    assert {"service", "benchmarks", "changelog", "book"} <= pages


def test_the_settings_block_agrees_with_the_declarations(built):
    page = Page((built / "settings.html").read_text())
    [block] = [text for text in page.blocks if text.startswith("MESSAGEBUS = {\n")]

    declared = {s.key: (s.default, s.description) for s in DECLARED}
    assert settings_block(block.strip()) == declared
    assert list(settings_block(block.strip())) == list(declared)  # in the order declared


def test_the_settings_table_has_each_key_its_default_rule_and_description(built):
    header, *rows = Page((built / "settings.html").read_text()).rows

    assert header == ["key", "default", "rule (messagebus.E003)", "what it does"]
    assert [row[0] for row in rows] == [s.key for s in DECLARED]
    for setting, (_, default, rule, description) in zip(DECLARED, rows, strict=True):
        assert ast.literal_eval(default) == setting.default, setting.key
        assert rule and setting.validate(Refused()).startswith(rule), setting.key
        assert setting.validate(setting.default) is None, setting.key  # the default passes
        assert description == setting.description, setting.key


def test_the_readme_links_into_the_docs_lead_to_pages():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)\)", readme)

    assert {"docs/guide.md", "docs/settings.md", "docs/production.md"} <= set(links)
    for link in links:
        assert (ROOT / link).is_file(), link


def test_the_install_text_names_every_runtime_requirement_and_python_for_each_django():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    install = (ROOT / "docs" / "guide.md").read_text().split("## Install", 1)[1].split("\n## ")[0]
    names = {
        "django": "Django", "tenacity": "tenacity", "anyio": "AnyIO", "asgiref": "asgiref",
        "cronsim": "cronsim", "msgspec": "msgspec",
    }  # fmt: skip

    for requirement in map(Requirement, project["dependencies"]):
        assert names[requirement.name.lower()] in install, requirement.name
    assert "| 5.2 (LTS) | 3.11 or newer |" in install
    assert "| 6.0, 6.1 | 3.12 or newer" in install
    readme = (ROOT / "README.md").read_text()
    assert "Django 5.2 with Python 3.11 or newer" in readme
    assert "Django 6.0 and 6.1, which need Python 3.12 or newer" in readme
