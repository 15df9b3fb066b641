"""The settings table: each key once, read lazily, documented where it is declared."""

import ast
import io
import re
import tokenize

from django.test import override_settings

from messagebus import conf
from tests.conftest import ROOT


def readme_settings() -> dict[str, tuple[object, str]]:
    """The README's MESSAGEBUS block: key -> (default, comment)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(MESSAGEBUS = \{\n.*?\n\})\n```", text, re.S)
    assert block, "README.md has no ```python MESSAGEBUS = {...}``` block"
    source = block.group(1)
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


def test_the_readme_settings_block_agrees_with_the_declarations():
    declared = {s.key: (s.default, s.description) for s in conf.Settings.declared()}
    assert readme_settings() == declared


def test_each_key_is_read_lazily_with_its_default():
    assert conf.settings.REDELIVERY_DELAY_MAX == 3600.0
    with override_settings(MESSAGEBUS={"REDELIVERY_DELAY_MAX": 5.0}):
        assert conf.settings.REDELIVERY_DELAY_MAX == 5.0
        assert conf.settings.MAX_DELIVERIES == 5


def test_validators_name_the_problem():
    assert conf.whole_number(0) == "must be a whole number of at least 1"
    assert conf.whole_number(True) is not None
    assert conf.seconds(-1) == "must be a number of seconds, not -1"
    assert conf.exception_paths(["builtins.len"]) == (
        "names 'builtins.len', which is not an exception class"
    )
    assert conf.executor("inline") is None and conf.executor("worker") is None
    assert conf.executor("celery") is None
    assert "not 'inline', 'worker', 'celery' or an importable class" in conf.executor("no.Such")


def test_the_amqp_exchange_is_a_setting():
    from messagebus.transports import amqp

    assert amqp.exchange().name == "messagebus"
    with override_settings(MESSAGEBUS={"AMQP_EXCHANGE": "shop.events"}):
        topic = amqp.exchange()
        queue = amqp.inbound_queue("line_allocated", "allocation")
    assert (topic.name, topic.type, topic.durable) == ("shop.events", "topic", True)
    assert queue.exchange.name == "shop.events" and queue.routing_key == "line_allocated"
