"""JSON form of messages, driven by each dataclass's field annotations.

Supported field types: str, int, float, bool, None, Decimal, date, datetime,
UUID, Enum, ``X | None``, ``list[X]``, ``tuple[X, ...]`` and nested
dataclasses of those. Anything else is an ``E002`` system check error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from .exceptions import MessageDecodeError, MessageEncodeError
from .messages import Message

Codec = tuple[Callable[[Any], Any] | None, Callable[[Any], Any]]
_METADATA = frozenset(f.name for f in dataclasses.fields(Message))
_codecs: dict[type, list[tuple[str, Callable[[Any], Any] | None, Callable[[Any], Any]]]] = {}


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready fields of a dataclass (a message's own fields only)."""
    data = {}
    for name, encode, _ in _fields(type(obj)):
        value = getattr(obj, name)
        data[name] = value if encode is None or value is None else encode(value)
    return data


def from_dict(cls: type, data: Any, **metadata: Any) -> Any:
    """Rebuild ``cls`` from ``to_dict`` output; ``MessageDecodeError`` if it can't."""
    if not isinstance(data, dict):
        raise MessageDecodeError(f"{cls.__qualname__} expects a JSON object, got {data!r}")
    kwargs = {}
    for name, _, decode in _fields(cls):
        if name not in data:
            continue
        try:
            kwargs[name] = decode(data[name])
        except (TypeError, ValueError, InvalidOperation) as exc:
            raise MessageDecodeError(f"{cls.__qualname__}.{name}: {exc}") from exc
    unknown = set(data) - set(kwargs)
    if unknown:
        raise MessageDecodeError(f"{cls.__qualname__} has no field {', '.join(sorted(unknown))}")
    try:
        return cls(**kwargs, **metadata)
    except TypeError as exc:
        raise MessageDecodeError(f"{cls.__qualname__}: {exc}") from exc


def check_serializable(cls: type) -> None:
    """Raise ``MessageEncodeError`` naming the first field with no JSON form."""
    _fields(cls)


def _fields(cls: type) -> list[tuple[str, Callable[[Any], Any] | None, Callable[[Any], Any]]]:
    try:
        return _codecs[cls]
    except KeyError:
        pass
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    skip = _METADATA if issubclass(cls, Message) else frozenset()
    codecs = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        try:
            encode, decode = _codec(hints[f.name])
        except MessageEncodeError as exc:
            raise MessageEncodeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
        codecs.append((f.name, encode, decode))
    _codecs[cls] = codecs
    return codecs


def _codec(hint: Any) -> Codec:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _optional(hint, args)
    if origin is list or origin is tuple:
        return _sequence(hint, origin, args)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return (lambda v: v.value), hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _fields(hint)
        return to_dict, lambda v: from_dict(hint, v)
    raise MessageEncodeError(f"{hint!r} has no JSON form")


def _optional(hint: Any, args: tuple[Any, ...]) -> Codec:
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or len(args) != 2:
        raise MessageEncodeError(f"{hint!r}: only `X | None` unions are supported")
    encode, decode = _codec(inner[0])
    return encode, lambda v: None if v is None else decode(v)


def _sequence(hint: Any, origin: type, args: tuple[Any, ...]) -> Codec:
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        raise MessageEncodeError(f"{hint!r}: use tuple[X, ...]")
    if not args:
        raise MessageEncodeError(f"{hint!r}: give the item type, as in list[int]")
    encode, decode = _codec(args[0])

    def decode_all(value: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        return origin(decode(item) for item in value)

    if encode is None:
        return list, decode_all
    return (lambda v: [encode(item) for item in v]), decode_all


def _checked(kind: type, convert: Callable[[Any], Any], *accepts: type) -> Callable[[Any], Any]:
    accepted = accepts or (kind,)

    def decode(value: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return convert(value)

    return decode


def _parse(kind: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return kind(value)

    return decode


_SCALARS: dict[Any, Codec] = {
    str: (None, _checked(str, str)),
    int: (None, _checked(int, int)),
    float: (None, _checked(float, float, int, float)),
    bool: (None, _checked(bool, bool)),
    type(None): (None, _checked(type(None), lambda v: v)),
    Decimal: (str, _checked(Decimal, Decimal, str, int)),
    dt.datetime: (dt.datetime.isoformat, _parse(dt.datetime.fromisoformat)),
    dt.date: (dt.date.isoformat, _parse(dt.date.fromisoformat)),
    uuid.UUID: (str, _parse(uuid.UUID)),
}
