"""JSON form of messages: msgspec checks and converts, as each dataclass's fields say.

Supported field types: str, int, float, bool, None, Decimal, date, datetime,
UUID, Enum (of str or of int values), ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses of those; a plain
``dict`` (or ``dict[str, Any]``) holds JSON as it is. Anything else is an
``E002`` system check error.

Each dataclass gets, once, two msgspec structs made from its annotations: its
JSON form (names and JSON types, unknown names refused), which a payload is
checked against before msgspec builds the dataclass from it; and its Python
form, which a message is checked against before msgspec writes it.

Errors are msgspec's, after the class's name: ``Opened: Expected `str`, got
`int` - at `$.name```. A nested dataclass's own error, when a message is
written, comes first: ``- at `$.qty` in `Line` - at `$.lines[1]```.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import types
import typing
import uuid
from dataclasses import MISSING
from decimal import Decimal
from typing import Any, ClassVar

import msgspec

from ..exceptions import MessageDecodeError, MessageEncodeError
from .messages import Message

_METADATA = frozenset(f.name for f in dataclasses.fields(Message))
# Taken only as instances, never parsed from a string, when a message is written.
_AS_THEY_ARE = (Decimal, dt.date, uuid.UUID)


@dataclasses.dataclass(frozen=True)
class Codec:
    """What msgspec needs to read and write one dataclass."""

    json: type[msgspec.Struct]  # the JSON it is stored as
    python: type[msgspec.Struct]  # the values it holds, as they are written
    # msgspec's options for them: only those it needs (each costs time on every call)
    check: dict[str, Any]  # for convert
    write: dict[str, Any]  # for to_builtins


_codecs: dict[type, Codec] = {}


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready fields of a dataclass (a message's own fields only).

    Each value is checked against its annotation, so a message that could
    not be read back is refused when it is stored, not when it is delivered.
    """
    cls = type(obj)
    codec = _codecs.get(cls) or _codec(cls)
    try:
        checked = msgspec.convert(obj, codec.python, **codec.check)
    except msgspec.ValidationError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    data: dict[str, Any] = msgspec.to_builtins(checked, **codec.write)
    return data


def from_dict(cls: type, data: Any, **metadata: Any) -> Any:
    """Rebuild ``cls`` from ``to_dict`` output; ``MessageDecodeError`` if it can't."""
    codec = _codecs.get(cls) or _codec(cls)
    try:
        msgspec.convert(data, codec.json)  # a JSON object, its names and types at every level
        return msgspec.convert({**data, **metadata}, cls)
    except msgspec.ValidationError as exc:
        raise MessageDecodeError(f"{cls.__qualname__}: {exc}") from exc
    except Exception as exc:  # a message's own __post_init__ may raise anything
        raise MessageDecodeError(f"{cls.__qualname__}: {exc!r}") from exc


def check_serializable(cls: type) -> None:
    """Raise ``MessageEncodeError`` naming the first field with no JSON form."""
    _codec(cls)


def _codec(cls: type) -> Codec:
    if codec := _codecs.get(cls):
        return codec
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    skip = _METADATA if issubclass(cls, Message) else frozenset()
    json, python = [], []
    for f in dataclasses.fields(cls):
        optional = f.default is not MISSING or f.default_factory is not MISSING
        if f.name in skip or (not f.init and optional):
            continue
        try:
            if not f.init:  # msgspec would ask the payload for it
                raise MessageEncodeError("a field with init=False needs a default")
            json_form, python_form = _forms(hints[f.name])
        except MessageEncodeError as exc:
            raise MessageEncodeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
        json.append((f.name, json_form, msgspec.UNSET) if optional else (f.name, json_form))
        python.append((f.name, python_form))
    try:
        msgspec.inspect.type_info(cls)  # anything else msgspec cannot build (an InitVar)
    except TypeError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    leaves = set().union(*(_leaves(form) for _, form in python))
    written = any(isinstance(leaf, type) and issubclass(leaf, Written) for leaf in leaves)
    check: dict[str, Any] = {"from_attributes": True}
    if leaves & set(_AS_THEY_ARE):
        check["builtin_types"] = _AS_THEY_ARE
    if written:
        check["dec_hook"] = _check
    _codecs[cls] = Codec(
        msgspec.defstruct(cls.__name__, json, kw_only=True, forbid_unknown_fields=True),
        msgspec.defstruct(cls.__name__, python),
        check,
        {"enc_hook": _unwrap} if written else {},
    )
    return _codecs[cls]


def _leaves(form: Any) -> set[Any]:
    """The types a Python form is made of: ``list[Decimal | None]``: Decimal and None."""
    args = typing.get_args(form)
    return set().union(*map(_leaves, args)) if args else {form}


def _forms(hint: Any) -> tuple[Any, Any]:
    """The JSON form of a field's values, and their Python form as msgspec checks it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not types.NoneType]
        if len(inner) != 1 or len(args) != 2:
            raise MessageEncodeError(f"{hint!r}: only `X | None` unions are supported")
        json, python = _forms(inner[0])
        return json | None, python | None
    if origin is list or origin is tuple:
        if not args or (origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)):
            raise MessageEncodeError(f"{hint!r}: use list[X] or tuple[X, ...]")
        json, python = _forms(args[0])
        return list[json], list[python]  # type: ignore[valid-type]
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise MessageEncodeError(f"{hint!r}: JSON keys are strings: use dict[str, X]")
        if not args or args[1] is Any:
            return dict[str, Any], _written(dict)
        json, python = _forms(args[1])
        return dict[str, json], dict[str, python]  # type: ignore[valid-type]
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if {type(m.value) for m in hint} not in ({str}, {int}):
            raise MessageEncodeError(f"{hint!r}: an Enum's values must be all str or all int")
        return hint, _written(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _codec(hint).json, _written(hint)
    raise MessageEncodeError(f"{hint!r} has no JSON form")


class Written:
    """A value checked and put in its JSON form here, where msgspec would take a stand-in
    for it (an enum's bare value, a dict for a dataclass) or write it otherwise than the
    rows already stored (a UTC datetime as ``Z``). A Python form holds ``_written(kind)``
    in its place: msgspec hands such a value to ``_check``, then writes its ``json``."""

    __slots__ = ("json",)
    kind: ClassVar[type]

    def __init__(self, value: Any) -> None:
        if not isinstance(value, self.kind):
            expected, got = self.kind.__qualname__, type(value).__qualname__
            raise TypeError(f"Expected `{expected}`, got `{got}`")
        self.json = self.write(value)

    def write(self, value: Any) -> Any:
        if self.kind is dt.datetime:  # as isoformat() writes it: +00:00 for UTC
            offset = value.utcoffset()
            if offset and (offset.seconds % 60 or offset.microseconds):
                raise ValueError(f"A UTC offset must be whole minutes, got `{value.isoformat()}`")
            return value.isoformat()
        if self.kind is dict:  # JSON as it is, if msgspec reads back what it writes
            try:
                copy = msgspec.json.decode(msgspec.json.encode(value))
            except (TypeError, ValueError, OverflowError):
                copy = None
            return copy if copy == value else _json(value)  # else: the reason, or tuples
        if isinstance(self.kind, enum.EnumType):
            return value.value
        codec = _codecs[self.kind]  # a nested dataclass
        try:
            return msgspec.convert(value, codec.python, **codec.check)
        except msgspec.ValidationError as exc:  # msgspec then adds where the value is
            raise ValueError(f"{exc} in `{self.kind.__qualname__}`") from None


@functools.cache
def _written(kind: type) -> type[Written]:
    """The type a Python form holds for values of ``kind`` that ``Written`` writes."""
    return type(kind.__name__, (Written,), {"__slots__": (), "kind": kind})


def _check(kind: type[Written], value: Any) -> Written:
    """msgspec's hook for the types it does not know: only ``_written``'s reach it."""
    return kind(value)


def _unwrap(value: Written) -> Any:
    return value.json


def _json(value: Any) -> Any:
    """A copy of ``value``, a JSON value as Python has it; TypeError naming what is not."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"Expected `str` keys, got {list(value)!r}")
        return {key: _json(item) for key, item in value.items()}
    raise TypeError(f"{value!r} has no JSON form: use str, int, float, bool, None, list, dict")


# (JSON form, Python form); a float field keeps an int as an int, as it always has.
_SCALARS: dict[Any, tuple[Any, Any]] = {
    str: (str, str),
    int: (int, int),
    float: (float, int | float),
    bool: (bool, bool),
    types.NoneType: (None, None),
    Decimal: (str | int, Decimal),
    dt.datetime: (str, _written(dt.datetime)),
    dt.date: (str, dt.date),
    uuid.UUID: (str, uuid.UUID),
}
