"""JSON form of messages, driven by each dataclass's field annotations.

Supported field types: str, int, float, bool, None, Decimal, date, datetime,
UUID, Enum, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and
nested dataclasses of those; a plain ``dict`` (or ``dict[str, Any]``) holds
JSON as it is: str keys; str, int, float, bool, None, lists and dicts. Anything
else is an ``E002`` system check error.
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

from ..exceptions import MessageDecodeError, MessageEncodeError
from .messages import Message

Convert = Callable[[Any], Any]
Codec = tuple[Convert, Convert]  # (encode, decode); each raises TypeError or ValueError
_METADATA = frozenset(f.name for f in dataclasses.fields(Message))
_codecs: dict[type, list[tuple[str, Convert, Convert]]] = {}


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready fields of a dataclass (a message's own fields only).

    Each value is checked against its annotation, so a message that could
    not be read back is refused when it is stored, not when it is delivered.
    """
    data = {}
    for name, encode, _ in _fields(type(obj)):
        try:
            data[name] = encode(getattr(obj, name))
        except (TypeError, ValueError) as exc:
            raise MessageEncodeError(f"{type(obj).__qualname__}.{name}: {exc}") from None
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
    except Exception as exc:  # a message's own __post_init__ may raise anything
        raise MessageDecodeError(f"{cls.__qualname__}: {exc!r}") from exc


def check_serializable(cls: type) -> None:
    """Raise ``MessageEncodeError`` naming the first field with no JSON form."""
    _fields(cls)


def _fields(cls: type) -> list[tuple[str, Convert, Convert]]:
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
    if hint is dict or origin is dict:
        return _mapping(hint, args)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _encoder(hint, lambda v: v.value), hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _fields(hint)
        return _encoder(hint, to_dict), lambda v: from_dict(hint, v)
    raise MessageEncodeError(f"{hint!r} has no JSON form")


def _optional(hint: Any, args: tuple[Any, ...]) -> Codec:
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or len(args) != 2:
        raise MessageEncodeError(f"{hint!r}: only `X | None` unions are supported")
    encode, decode = _codec(inner[0])
    return (
        lambda v: None if v is None else encode(v),
        lambda v: None if v is None else decode(v),
    )


def _sequence(hint: Any, origin: type, args: tuple[Any, ...]) -> Codec:
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        raise MessageEncodeError(f"{hint!r}: use tuple[X, ...]")
    if not args:
        raise MessageEncodeError(f"{hint!r}: give the item type, as in list[int]")
    encode, decode = _codec(args[0])

    def encode_all(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a {origin.__name__}, got {value!r}")
        return [encode(item) for item in value]

    def decode_all(value: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        return origin(decode(item) for item in value)

    return encode_all, decode_all


def _mapping(hint: Any, args: tuple[Any, ...]) -> Codec:
    if args and args[0] is not str:
        raise MessageEncodeError(f"{hint!r}: a JSON object's keys are strings: use dict[str, X]")
    if not args or args[1] is Any:
        return _json_object, _decoder(dict, lambda v: v)
    encode, decode = _codec(args[1])

    def encode_all(value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a dict, got {value!r}")
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"expected str keys, got {list(value)!r}")
        return {key: encode(item) for key, item in value.items()}

    def decode_all(value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {value!r}")
        return {key: decode(item) for key, item in value.items()}

    return encode_all, decode_all


def _json_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict, got {value!r}")
    return _json(value)


def _json(value: Any) -> Any:
    """A copy of ``value``, a JSON value as Python has it; TypeError naming what is not."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"expected str keys, got {list(value)!r}")
        return {key: _json(item) for key, item in value.items()}
    raise TypeError(f"{value!r} has no JSON form: use str, int, float, bool, None, list, dict")


NoneType = type(None)


class _Nothing:
    """No value is one of these: the default of ``_encoder(refuse=...)``."""


def _encoder(
    kind: type | tuple[type, ...], convert: Convert = lambda v: v, refuse: type = _Nothing
) -> Convert:
    """Check a value is a ``kind`` (bool is no number, datetime no date), then convert it."""
    name = kind[-1].__name__ if isinstance(kind, tuple) else kind.__name__

    def encode(value: Any) -> Any:
        if not isinstance(value, kind) or isinstance(value, refuse):
            raise TypeError(f"expected {name}, got {value!r}")
        return convert(value)

    return encode


def _decoder(kind: type, convert: Convert, *accepts: type) -> Convert:
    accepted = accepts or (kind,)

    def decode(value: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return convert(value)

    return decode


def _parse(kind: Callable[[str], Any]) -> Convert:
    def decode(value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return kind(value)

    return decode


_SCALARS: dict[Any, Codec] = {
    str: (_encoder(str), _decoder(str, str)),
    int: (_encoder(int, refuse=bool), _decoder(int, int)),
    float: (_encoder((int, float), refuse=bool), _decoder(float, float, int, float)),
    bool: (_encoder(bool), _decoder(bool, bool)),
    NoneType: (_encoder(NoneType), _decoder(NoneType, lambda v: v)),
    Decimal: (_encoder(Decimal, str), _decoder(Decimal, Decimal, str, int)),
    dt.datetime: (_encoder(dt.datetime, dt.datetime.isoformat), _parse(dt.datetime.fromisoformat)),
    dt.date: (
        _encoder(dt.date, dt.date.isoformat, refuse=dt.datetime),
        _parse(dt.date.fromisoformat),
    ),
    uuid.UUID: (_encoder(uuid.UUID, str), _parse(uuid.UUID)),
}
