"""The API's only parser (``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]``)."""

from collections.abc import Mapping
from typing import IO, Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# The API's bodies are flat objects: JSON nested deeper than this is refused,
# well before Python's recursion limit, which validating or showing it could reach.
MAX_NESTING = 100
TOO_DEEP = f"JSON parse error - nested more than {MAX_NESTING} deep"


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing JSON nested more than ``MAX_NESTING`` deep.

    DRF's own turns only a ``ValueError`` into a parse error: JSON nested
    deeper than Python's recursion limit was a ``RecursionError``, a 500.
    """

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        if nesting_exceeds(data, MAX_NESTING):
            raise ParseError(TOO_DEEP)
        return data


def nesting_exceeds(data: Any, limit: int) -> bool:
    """Whether arrays and objects in ``data`` are nested more than ``limit`` deep (no recursion)."""
    pending = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth == limit:
                return True
            pending.extend((item, depth + 1) for item in value)
    return False
