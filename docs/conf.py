"""Sphinx configuration: Markdown pages through MyST, the built-in alabaster
theme (nothing fetched at build time or by the pages), and the settings
reference generated from messagebus/conf.py (docs/_ext/messagebus_settings.py).

Build: ``.venv/bin/python -m sphinx -W -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

import messagebus  # noqa: E402

project = "messagebus for Django"
author = "messagebus contributors"
copyright = "the messagebus contributors, BSD-3-Clause"
release = version = messagebus.__version__

extensions = ["myst_parser", "messagebus_settings"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
smartquotes = False  # quotes in the text as written, as in the code it quotes

myst_heading_anchors = 3  # [text](page.md#a-heading) links, checked by the build

html_theme = "alabaster"
html_theme_options = {
    "description": "A signal-free command and event bus",
    "show_powered_by": False,
}
html_static_path: list[str] = []
html_show_sourcelink = False
