import dataclasses
import datetime as dt
import enum
import json
import re
import typing
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

import messagebus
from messagebus.core.serialization import check_serializable, from_dict, to_dict
from messagebus.exceptions import MessageDecodeError, MessageEncodeError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclass(frozen=True)
class Everything(messagebus.Event):
    text: str
    number: int
    ratio: float
    flag: bool
    price: Decimal
    day: dt.date
    moment: dt.datetime
    ident: uuid.UUID
    maybe: int | None
    colour: Colour
    lines: list[Line]
    tags: tuple[str, ...] = ()
    nested: Line | None = None
    notes: list[dt.date] = field(default_factory=list)


def sample() -> Everything:
    return Everything(
        text="héllo",
        number=-3,
        ratio=0.25,
        flag=True,
        price=Decimal("19.990"),
        day=dt.date(2026, 1, 31),
        moment=dt.datetime(2026, 1, 31, 12, 30, 5, 123456, tzinfo=dt.UTC),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        maybe=None,
        colour=Colour.BLUE,
        lines=[Line("LAMP", 2), Line("CHAIR", 1)],
        tags=("a", "b"),
        nested=Line("SOFA", 7),
        notes=[dt.date(2025, 12, 1)],
    )


def test_round_trip_keeps_every_value_and_type():
    event = sample()
    data = to_dict(event)
    assert data["price"] == "19.990"
    assert data["day"] == "2026-01-31"
    assert data["ident"] == "12345678-1234-5678-1234-567812345678"
    assert data["colour"] == "blue"
    assert data["lines"] == [{"sku": "LAMP", "qty": 2}, {"sku": "CHAIR", "qty": 1}]
    assert "message_id" not in data
    back = from_dict(Everything, data, message_id=event.message_id)
    assert back == event
    assert back.message_id == event.message_id
    assert isinstance(back.price, Decimal) and str(back.price) == "19.990"
    assert back.moment.tzinfo is not None
    assert isinstance(back.tags, tuple) and isinstance(back.lines[0], Line)


def test_round_trip_through_json_text():
    import json

    event = sample()
    assert from_dict(Everything, json.loads(json.dumps(to_dict(event)))) == event


@pytest.mark.parametrize(
    "change, error",
    [
        ({"number": "3"}, "Everything.number: expected int"),
        ({"number": True}, "Everything.number: expected int"),
        ({"day": "31/01/2026"}, "Everything.day"),
        ({"price": "cheap"}, "Everything.price"),
        ({"lines": {"sku": "x"}}, "Everything.lines: expected a list"),
        ({"colour": "green"}, "Everything.colour"),
        ({"surprise": 1}, "has no field surprise"),
    ],
)
def test_decoding_bad_data_names_the_field(change, error):
    data = {**to_dict(sample()), **change}
    with pytest.raises(MessageDecodeError, match=error):
        from_dict(Everything, data)


def test_decoding_reports_a_missing_field():
    data = to_dict(sample())
    del data["text"]
    with pytest.raises(MessageDecodeError, match="text"):
        from_dict(Everything, data)


def test_decoding_needs_an_object():
    with pytest.raises(MessageDecodeError, match="expects a JSON object"):
        from_dict(Everything, ["not", "an", "object"])


@pytest.mark.parametrize("hint", [set[int], dict[int, str], object, int | str, tuple[int, str]])
def test_types_without_a_json_form_are_refused(hint):
    cls = dataclass(frozen=True)(
        type("Odd", (messagebus.Event,), {"__annotations__": {"value": hint}})
    )
    with pytest.raises(MessageEncodeError, match=r"Odd\.value"):
        check_serializable(cls)


@dataclass(frozen=True)
class Happened(messagebus.Event):
    """Seed 001's event: a name and a payload of any JSON."""

    name: str
    payload: dict
    prices: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    extra: dict[str, typing.Any] | None = None


def test_dict_fields_round_trip():
    event = Happened(
        "allocated",
        {"orderid": "o1", "qty": 3, "lines": [{"sku": "LAMP"}], "rush": True, "note": None},
        prices={"LAMP": Decimal("9.99")},
        extra={"by": "api"},
    )
    data = json.loads(json.dumps(to_dict(event)))
    assert data["prices"] == {"LAMP": "9.99"}
    back = from_dict(Happened, data)
    assert back == event
    assert isinstance(back.prices["LAMP"], Decimal)


@pytest.mark.parametrize(
    "change, error",
    [
        (
            {"payload": {"at": dt.date(2026, 1, 1)}},
            "Happened.payload: datetime.date(2026, 1, 1) has no JSON form",
        ),
        ({"payload": {1: "one"}}, "Happened.payload: expected str keys"),
        ({"payload": ["not", "a", "dict"]}, "Happened.payload: expected a dict"),
        ({"prices": {"LAMP": 9.99}}, "Happened.prices: expected Decimal"),
    ],
)
def test_dict_fields_refuse_what_could_not_be_read_back(change, error):
    event = dataclasses.replace(Happened("x", {}), **change)
    with pytest.raises(MessageEncodeError, match=re.escape(error)):
        to_dict(event)


@dataclass(frozen=True)
class Gaps(messagebus.Event):
    prices: list[Decimal | None]
    days: tuple[dt.date | None, ...]


def test_optional_items_in_sequences_round_trip():
    event = Gaps(prices=[Decimal("1.50"), None], days=(None, dt.date(2026, 1, 1)))
    data = to_dict(event)
    assert data == {"prices": ["1.50", None], "days": [None, "2026-01-01"]}
    assert from_dict(Gaps, data) == event


@pytest.mark.parametrize(
    "change, error",
    [
        ({"number": "3"}, "Everything.number: expected int, got '3'"),
        ({"number": True}, "Everything.number: expected int, got True"),
        ({"ratio": "0.5"}, "Everything.ratio: expected float"),
        ({"day": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, "Everything.day: expected date"),
        ({"price": 1.5}, "Everything.price: expected Decimal"),
        ({"lines": [("LAMP", 2)]}, "Everything.lines: expected Line"),
        ({"colour": "blue"}, "Everything.colour: expected Colour"),
        ({"tags": "ab"}, "Everything.tags: expected a tuple"),
    ],
)
def test_encoding_refuses_values_that_could_not_be_read_back(change, error):
    event = dataclasses.replace(sample(), **change)
    with pytest.raises(MessageEncodeError, match=re.escape(error)):
        to_dict(event)


def test_an_error_in_a_messages_own_post_init_is_a_decode_error():
    @dataclass(frozen=True)
    class Checked(messagebus.Event):
        name: str

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.name:
                raise ValueError("name required")

    with pytest.raises(MessageDecodeError, match="name required"):
        from_dict(Checked, {"name": ""})
