"""JSON form of messages: msgspec checks and converts, as each dataclass's fields say.

Supported field types: str, int, float, bool, None, Decimal, date, datetime,
UUID, Enum (of str or of int values), ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses of those; a plain
``dict`` (or ``dict[str, Any]``) holds JSON as it is: str keys; str, int,
float, bool, None, lists and dicts. Anything else is an ``E002`` system check
error.

Each dataclass gets, once, two msgspec structs made from its annotations: its
JSON form (``Codec.json``: names and JSON types, unknown names refused), which a
payload is checked against before msgspec builds the dataclass from it; and its
Python form (``Codec.python``), which a message is checked against before
msgspec writes it. A few values are checked and written here (``Written``): those
msgspec would take too readily from a Python object (an enum's bare value, a dict
for a dataclass) or would write otherwise than the rows already stored (a UTC
datetime as ``Z``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import re
import types
import typing
import uuid
from decimal import Decimal
from typing import Any, ClassVar

import msgspec

from ..exceptions import MessageDecodeError, MessageEncodeError
from .messages import Message

_METADATA = frozenset(f.name for f in dataclasses.fields(Message))
# Taken only as instances, never parsed from a string, when a message is written.
_AS_THEY_ARE = (Decimal, dt.date, uuid.UUID)
NoneType = type(None)


@dataclasses.dataclass(frozen=True)
class Codec:
    """What msgspec needs to read and write one dataclass."""

    hints: dict[str, Any]  # the annotation of each field that is stored
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
        raise MessageEncodeError(_explain(cls, exc, obj, "a dict")) from None
    data: dict[str, Any] = msgspec.to_builtins(checked, **codec.write)
    return data


def from_dict(cls: type, data: Any, **metadata: Any) -> Any:
    """Rebuild ``cls`` from ``to_dict`` output; ``MessageDecodeError`` if it can't."""
    if not isinstance(data, dict):
        raise MessageDecodeError(f"{cls.__qualname__} expects a JSON object, got {data!r}")
    codec = _codecs.get(cls) or _codec(cls)
    try:
        msgspec.convert(data, codec.json)  # names and JSON types, at every level
        return msgspec.convert({**data, **metadata}, cls)
    except msgspec.ValidationError as exc:
        raise MessageDecodeError(_explain(cls, exc, data, "a JSON object")) from exc
    except Exception as exc:  # a message's own __post_init__ may raise anything
        raise MessageDecodeError(f"{cls.__qualname__}: {exc!r}") from exc


def check_serializable(cls: type) -> None:
    """Raise ``MessageEncodeError`` naming the first field with no JSON form."""
    _codec(cls)


def _codec(cls: type) -> Codec:
    try:
        return _codecs[cls]
    except KeyError:
        pass
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    skip = _METADATA if issubclass(cls, Message) else frozenset()
    stored, json, python = {}, [], []
    for f in dataclasses.fields(cls):
        optional = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        if f.name in skip or (not f.init and optional):
            continue
        try:
            if not f.init:  # msgspec would ask the payload for it
                raise MessageEncodeError("a field with init=False needs a default")
            json_form, python_form = _forms(hints[f.name])
        except MessageEncodeError as exc:
            raise MessageEncodeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
        stored[f.name] = hints[f.name]
        json.append((f.name, json_form, msgspec.UNSET) if optional else (f.name, json_form))
        python.append((f.name, python_form))
    try:
        msgspec.inspect.type_info(cls)  # anything else msgspec cannot build (an InitVar)
    except TypeError as exc:
        raise MessageEncodeError(f"{cls.__qualname__}: {exc}") from None
    leaves = {leaf for _, form in python for leaf in _leaves(form)}
    written = any(issubclass(leaf, Written) for leaf in leaves if isinstance(leaf, type))
    check: dict[str, Any] = {"from_attributes": True}
    if leaves & set(_AS_THEY_ARE):
        check["builtin_types"] = _AS_THEY_ARE
    if written:
        check["dec_hook"] = _check
    name = cls.__name__
    codec = Codec(
        stored,
        msgspec.defstruct(name, json, kw_only=True, forbid_unknown_fields=True),
        msgspec.defstruct(name, python),
        check,
        {"enc_hook": _unwrap} if written else {},
    )
    _codecs[cls] = codec
    return codec


def _leaves(form: Any) -> set[Any]:
    """The types a Python form is made of: ``list[Decimal | None]``: Decimal and None."""
    args = typing.get_args(form)
    return set().union(*map(_leaves, args)) if args else {form}


def _forms(hint: Any) -> tuple[Any, Any]:
    """The JSON form of a field's values, and their Python form as msgspec checks it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not NoneType]
        if len(inner) != 1 or len(args) != 2:
            raise MessageEncodeError(f"{hint!r}: only `X | None` unions are supported")
        json, python = _forms(inner[0])
        return json | None, python | None
    if origin is list or origin is tuple:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise MessageEncodeError(f"{hint!r}: use tuple[X, ...]")
        if not args:
            raise MessageEncodeError(f"{hint!r}: give the item type, as in list[int]")
        json, python = _forms(args[0])
        return list[json], list[python]  # type: ignore[valid-type]
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise MessageEncodeError(
                f"{hint!r}: a JSON object's keys are strings: use dict[str, X]"
            )
        if not args or args[1] is Any:
            return dict[str, Any], JsonObject
        json, python = _forms(args[1])
        return dict[str, json], dict[str, python]  # type: ignore[valid-type]
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not (all(isinstance(m.value, str) for m in hint) or all(_is_int(m.value) for m in hint)):
            raise MessageEncodeError(f"{hint!r}: an Enum's values must be all str or all int")
        return hint, _written(Member, hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _codec(hint).json, _written(Nested, hint)
    raise MessageEncodeError(f"{hint!r} has no JSON form")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Written:
    """A value checked and put in its JSON form here, then written by msgspec as ``json``."""

    __slots__ = ("json",)
    kind: ClassVar[type] = object
    expected: ClassVar[str] = ""

    def __init__(self, value: Any) -> None:
        if not isinstance(value, self.kind):
            raise TypeError(f"expected {self.expected or self.kind.__name__}, got {value!r}")
        self.json = self.write(value)

    def write(self, value: Any) -> Any:
        raise NotImplementedError


class DateTime(Written):
    """As ``isoformat()`` writes it: ``+00:00`` for UTC, as the rows already stored."""

    kind = dt.datetime

    def write(self, value: dt.datetime) -> str:
        offset = value.utcoffset()
        if offset and (offset.seconds % 60 or offset.microseconds):
            raise ValueError(f"{value!r}: a datetime's UTC offset must be whole minutes")
        return value.isoformat()


class Member(Written):
    """An enum's member (its bare value is refused), written as its value."""

    def write(self, value: enum.Enum) -> Any:
        return value.value


class Nested(Written):
    """An instance of the nested dataclass (a dict is refused), in its Python form."""

    def write(self, value: Any) -> Any:
        codec = _codecs[self.kind]
        try:
            return msgspec.convert(value, codec.python, **codec.check)
        except msgspec.ValidationError as exc:
            raise MessageEncodeError(_explain(self.kind, exc, value, "a dict")) from None


class JsonObject(Written):
    """A dict of JSON as it is: str keys, JSON values all the way down."""

    kind = dict
    expected = "a dict"

    def write(self, value: dict[str, Any]) -> Any:
        try:  # JSON if msgspec writes it and reads it back as it is (the common case)
            copy = msgspec.json.decode(msgspec.json.encode(value))
        except (TypeError, ValueError, OverflowError):
            copy = None
        return copy if copy == value else _json(value)  # else: the reason, or tuples to lists


@functools.cache
def _written(base: type[Written], kind: type) -> type[Written]:
    return type(kind.__name__, (base,), {"__slots__": (), "kind": kind})


def _check(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it does not know: ``Written``'s."""
    if isinstance(kind, type) and issubclass(kind, Written):
        return kind(value)
    raise NotImplementedError


def _unwrap(value: Any) -> Any:
    if isinstance(value, Written):
        return value.json
    raise NotImplementedError


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


# (JSON form, Python form); a float field keeps an int as an int, as it always has.
_SCALARS: dict[Any, tuple[Any, Any]] = {
    str: (str, str),
    int: (int, int),
    float: (float, int | float),
    bool: (bool, bool),
    NoneType: (None, None),
    Decimal: (str | int, Decimal),
    dt.datetime: (str, DateTime),
    dt.date: (str, dt.date),
    uuid.UUID: (str, uuid.UUID),
}

# msgspec's errors: "<what> - at `$.lines[0].qty`" (or "at `key` in `$.prices`").
_ERROR = re.compile(r"(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?", re.DOTALL)
_STEP = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")
_EXPECTED = re.compile(r"Expected `[^`]*`, got `(?P<got>[^`]*)`")
_FIELD = re.compile(r"Object (?P<how>contains unknown|missing required) field `(?P<name>[^`]*)`")
_UNKNOWN = object()


def _explain(cls: type, exc: msgspec.ValidationError, value: Any, a_dict: str) -> str:
    """msgspec's error in this module's words: each dataclass on the way, with the field
    (``Everything.lines: Line.qty: expected int, got 'x'``), what was expected and what came."""
    match = _ERROR.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    hint: Any = cls
    where = []
    for name, index in _STEP.findall(match["path"] or ""):
        hint = _inner(hint)
        if name:
            where.append(f"{hint.__qualname__}.{name}")
            hint = _codec(hint).hints.get(name, Any)
        else:  # an item of a list, a tuple or a dict
            hint = (*typing.get_args(hint), Any)[1 if typing.get_origin(hint) is dict else 0]
        value = _item(value, name or index)
    what = match["what"]
    if match["key"]:
        what = f"expected str keys, got {list(value)!r}"
    elif expected := _EXPECTED.fullmatch(what):
        got = expected["got"] if value is _UNKNOWN else repr(value)
        what = f"expected {_described(hint, a_dict)}, got {got}"
    elif field := _FIELD.fullmatch(what):
        owner = _inner(hint).__qualname__
        what = f"{owner} has no field {field['name']}"
        if field["how"] != "contains unknown":
            what = f"{owner}.{field['name']}: missing"
        return ": ".join([*where, what])
    return ": ".join([*where, what] if where else [cls.__qualname__, what])


def _item(value: Any, key: str) -> Any:
    """The value at one step of msgspec's path: a field, an index, or ``...`` (a dict's)."""
    if key == "...":
        return _UNKNOWN
    if isinstance(value, dict):
        return value.get(key, _UNKNOWN)
    if isinstance(value, list | tuple) and key.isdigit() and int(key) < len(value):
        return value[int(key)]
    return getattr(value, key, _UNKNOWN) if key.isidentifier() else _UNKNOWN


def _inner(hint: Any) -> Any:
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not NoneType]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _described(hint: Any, a_dict: str) -> str:
    hint = _inner(hint)
    kind = typing.get_origin(hint) or hint
    if kind is list or kind is tuple:
        return f"a {kind.__name__}"
    if kind is dict:
        return a_dict
    return "None" if kind is NoneType else getattr(kind, "__name__", repr(kind))
