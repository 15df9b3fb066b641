"""The API's only parser (``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]``)."""

import io
from collections.abc import Mapping
from typing import IO, Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from messagebus.external.limits import MAX_NESTING, nested_deeper

# The API's bodies are flat objects: JSON nested deeper than the limit every door of
# the service applies (the inbound consumer's too) is refused before it is decoded.
TOO_DEEP = f"JSON parse error - nested more than {MAX_NESTING} deep"


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing JSON nested more than ``MAX_NESTING`` deep.

    DRF's own turns only a ``ValueError`` into a parse error: JSON nested
    deeper than Python's recursion limit was a ``RecursionError``, a 500. The
    depth is read from the bytes, so decoding never recurses that far.
    """

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = stream.read()
        if nested_deeper(body, MAX_NESTING):
            raise ParseError(TOO_DEEP)
        data: dict[str, Any] = super().parse(io.BytesIO(body), media_type, parser_context)
        return data
