"""What inbound bytes are checked for before anything decodes them as JSON: their nesting,
read from the bytes, so that decoding never recurses past ``MAX_NESTING``.

The inbox checks a body (``inbound``), and a transport a structured CloudEvent
(``cloudevents``), before either calls ``json.loads``.
"""

from __future__ import annotations

import re

MAX_NESTING = 100  # arrays and objects within each other; as the API's JSON parser

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def nested_deeper(body: bytes, limit: int) -> bool:
    """Whether the JSON in ``body`` nests arrays and objects more than ``limit`` deep,
    read from the bytes (brackets within strings do not count), without recursion."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", body)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
