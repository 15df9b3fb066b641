"""The ``messagebus-settings`` directive: the MESSAGEBUS reference, built from
``messagebus/conf.py`` at every build, so the docs cannot drift from the code.

Each key of ``conf.Settings`` becomes a line of a ``MESSAGEBUS = {...}`` block
(its default, its description as the comment) and a row of a table (key,
default, the rule its validator enforces, description). The rule is the
validator's own message for a value it refuses, without the value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from messagebus import conf


class _Refused:
    """A value no validator accepts; its repr ends the message, and is cut off."""

    def __repr__(self) -> str:
        return "<value>"


def literal(value: Any, indent: str = "    ") -> str:
    """``value`` as Python source, in the house's (ruff format's) spelling."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, list | tuple) and value:
        inner = "".join(f"{indent}    {literal(item, indent + '    ')},\n" for item in value)
        return f"[\n{inner}{indent}]"
    if isinstance(value, dict) and value:
        inner = "".join(
            f"{indent}    {literal(key)}: {literal(item, indent + '    ')},\n"
            for key, item in value.items()
        )
        return f"{{\n{inner}{indent}}}"
    return repr(value)


def rule(setting: conf.Setting[Any]) -> str:
    """What the ``messagebus.E003`` check asks of a value of ``setting``."""
    problem = setting.validate(_Refused())
    if problem is None:
        return "any value"
    return re.sub(r",? not <value>$", "", problem)


def settings_block() -> str:
    """``MESSAGEBUS = {...}`` with every key at its default, described in a comment."""
    lines = ["MESSAGEBUS = {"]
    for setting in conf.Settings.declared():
        value = literal(setting.default)
        head, newline, rest = value.partition("\n")
        comment = f"  # {setting.description}"
        lines.append(f"    {json.dumps(setting.key)}: {head}{',' if not newline else ''}{comment}")
        if newline:
            lines.append(f"{rest},")
    lines.append("}")
    return "\n".join(lines)


def _cell(*children: nodes.Node) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph("", "", *children)
    return entry


def settings_table() -> nodes.table:
    columns = ["key", "default", "rule (messagebus.E003)", "what it does"]
    table = nodes.table(classes=["messagebus-settings"])
    group = nodes.tgroup(cols=len(columns))
    table += group
    for width in (24, 26, 36, 46):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for title in columns:
        row += _cell(nodes.Text(title))
    head += row
    group += head
    body = nodes.tbody()
    for setting in conf.Settings.declared():
        row = nodes.row(ids=[f"setting-{setting.key.lower().replace('_', '-')}"])
        default = repr(setting.default)
        row += _cell(nodes.literal(setting.key, setting.key))
        row += _cell(nodes.literal(default, default))
        row += _cell(nodes.Text(rule(setting)))
        row += _cell(nodes.Text(setting.description))
        body += row
    group += body
    return table


class MessagebusSettings(SphinxDirective):
    """``{messagebus-settings}``: the block and the table; no arguments."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(conf.__file__)
        block = settings_block()
        code = nodes.literal_block(block, block, language="python")
        return [code, settings_table()]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("messagebus-settings", MessagebusSettings)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
