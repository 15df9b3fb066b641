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
        ({"number": "3"}, "Everything: Expected `int`, got `str` - at `$.number`"),
        ({"number": True}, "Everything: Expected `int`, got `bool` - at `$.number`"),
        ({"day": "31/01/2026"}, "Everything: Invalid RFC3339 encoded date - at `$.day`"),
        ({"price": "cheap"}, "Everything: Invalid decimal string - at `$.price`"),
        ({"lines": {"sku": "x"}}, "Everything: Expected `array`, got `object` - at `$.lines`"),
        ({"colour": "green"}, "Everything: Invalid enum value 'green' - at `$.colour`"),
        ({"surprise": 1}, "Everything: Object contains unknown field `surprise`"),
    ],
)
def test_decoding_bad_data_names_the_field(change, error):
    data = {**to_dict(sample()), **change}
    with pytest.raises(MessageDecodeError, match=re.escape(error)):
        from_dict(Everything, data)


def test_decoding_reports_a_missing_field():
    data = to_dict(sample())
    del data["text"]
    with pytest.raises(
        MessageDecodeError, match="Everything: Object missing required field `text`"
    ):
        from_dict(Everything, data)


def test_decoding_needs_an_object():
    with pytest.raises(MessageDecodeError, match="Everything: Expected `object`, got `array`"):
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
            "Happened: datetime.date(2026, 1, 1) has no JSON form: use str, int, float, bool, "
            "None, list, dict - at `$.payload`",
        ),
        ({"payload": {1: "one"}}, "Happened: Expected `str` keys, got [1] - at `$.payload`"),
        (
            {"payload": ["not", "a", "dict"]},
            "Happened: Expected `dict`, got `list` - at `$.payload`",
        ),
        (
            {"prices": {"LAMP": 9.99}},
            "Happened: Expected `decimal`, got `float` - at `$.prices[...]`",
        ),
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
        ({"number": "3"}, "Everything: Expected `int`, got `str` - at `$.number`"),
        ({"number": True}, "Everything: Expected `int`, got `bool` - at `$.number`"),
        ({"ratio": "0.5"}, "Everything: Expected `int | float`, got `str` - at `$.ratio`"),
        (
            {"day": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
            "Everything: Expected `date`, got `datetime` - at `$.day`",
        ),
        ({"price": 1.5}, "Everything: Expected `decimal`, got `float` - at `$.price`"),
        ({"lines": [("LAMP", 2)]}, "Everything: Expected `Line`, got `tuple` - at `$.lines[0]`"),
        ({"colour": "blue"}, "Everything: Expected `Colour`, got `str` - at `$.colour`"),
        ({"tags": "ab"}, "Everything: Expected `array`, got `str` - at `$.tags`"),
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


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 3


@dataclass(frozen=True)
class Stored(messagebus.Event):
    """A field of every supported type, for rows written before msgspec wrote them."""

    text: str
    number: int
    large: int
    ratio: float
    whole: float
    flag: bool
    nothing: None
    price: Decimal
    tiny: Decimal
    day: dt.date
    moment: dt.datetime
    local: dt.datetime
    naive: dt.datetime
    ident: uuid.UUID
    colour: Colour
    size: Size
    maybe: int | None
    lines: list[Line]
    tags: tuple[str, ...]
    prices: dict[str, Decimal]
    payload: dict
    extra: dict[str, typing.Any] | None
    nested: Line | None
    gaps: list[Decimal | None]


# Written by the hand-written conversion this module had before it used msgspec.
STORED_ROW = (
    '{"text": "héllo \\"quoted\\" ☃", "number": -3, "large": 100000000000000000000, '
    '"ratio": 0.25, "whole": 2, "flag": false, "nothing": null, "price": "19.990", '
    '"tiny": "1E-7", "day": "2026-01-31", "moment": "2026-01-31T12:30:05.123456+00:00", '
    '"local": "2026-07-01T09:00:00+02:00", "naive": "2026-01-31T23:59:59", '
    '"ident": "12345678-1234-5678-1234-567812345678", "colour": "blue", "size": 3, '
    '"maybe": null, "lines": [{"sku": "LAMP", "qty": 2}, {"sku": "CHAIR", "qty": 1}], '
    '"tags": ["a", "b"], "prices": {"LAMP": "9.99", "SOFA": "100"}, '
    '"payload": {"user": {"id": 7, "tags": ["new"]}, "ok": true, "score": 1.5, "none": null}, '
    '"extra": null, "nested": {"sku": "SOFA", "qty": 7}, "gaps": ["1.50", null]}'
)


def test_rows_stored_before_still_decode_and_are_written_the_same_today():
    stored = Stored(
        text='héllo "quoted" \u2603',
        number=-3,
        large=10**20,
        ratio=0.25,
        whole=2,
        flag=False,
        nothing=None,
        price=Decimal("19.990"),
        tiny=Decimal("1E-7"),
        day=dt.date(2026, 1, 31),
        moment=dt.datetime(2026, 1, 31, 12, 30, 5, 123456, tzinfo=dt.UTC),
        local=dt.datetime(2026, 7, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        naive=dt.datetime(2026, 1, 31, 23, 59, 59),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        colour=Colour.BLUE,
        size=Size.LARGE,
        maybe=None,
        lines=[Line("LAMP", 2), Line("CHAIR", 1)],
        tags=("a", "b"),
        prices={"LAMP": Decimal("9.99"), "SOFA": Decimal("100")},
        payload={"user": {"id": 7, "tags": ["new"]}, "ok": True, "score": 1.5, "none": None},
        extra=None,
        nested=Line("SOFA", 7),
        gaps=[Decimal("1.50"), None],
    )

    back = from_dict(Stored, json.loads(STORED_ROW))

    assert back == stored
    assert str(back.price) == "19.990" and back.naive.tzinfo is None
    assert isinstance(back.size, Size) and isinstance(back.tags, tuple)
    assert isinstance(back.whole, float) and isinstance(back.lines[0], Line)
    assert json.dumps(to_dict(stored), ensure_ascii=False) == STORED_ROW


@pytest.mark.parametrize(
    "change, error",
    [
        (
            {"lines": [{"sku": "LAMP", "qty": 2, "x": 1}]},
            "Everything: Object contains unknown field `x` - at `$.lines[0]`",
        ),
        (
            {"nested": {"sku": "SOFA", "qty": "7"}},
            "Everything: Expected `int`, got `str` - at `$.nested.qty`",
        ),
        (
            {"nested": {"sku": "SOFA"}},
            "Everything: Object missing required field `qty` - at `$.nested`",
        ),
        ({"price": 19.99}, "Everything: Expected `int | str`, got `float` - at `$.price`"),
        ({"moment": 1769862605}, "Everything: Expected `str`, got `int` - at `$.moment`"),
        (
            {"message_id": str(uuid.uuid4())},
            "Everything: Object contains unknown field `message_id`",
        ),
    ],
)
def test_decoding_names_the_nested_field_and_refuses_what_it_never_wrote(change, error):
    data = {**to_dict(sample()), **change}
    with pytest.raises(MessageDecodeError, match=re.escape(error)):
        from_dict(Everything, data)


def test_decimals_are_read_from_strings_and_whole_numbers():
    assert from_dict(Everything, {**to_dict(sample()), "price": 20}).price == Decimal(20)


@pytest.mark.parametrize(
    "change, error",
    [
        (
            {"nested": {"sku": "SOFA", "qty": 7}},
            "Everything: Expected `Line`, got `dict` - at `$.nested`",
        ),
        (
            {"nested": Line("SOFA", "7")},
            "Everything: Expected `int`, got `str` - at `$.qty` in `Line` - at `$.nested`",
        ),
        (
            {"lines": [Line("LAMP", 2), Line("SOFA", "7")]},
            "Everything: Expected `int`, got `str` - at `$.qty` in `Line` - at `$.lines[1]`",
        ),
        ({"maybe": 1.0}, "Everything: Expected `int | null`, got `float` - at `$.maybe`"),
        ({"colour": Size.LARGE}, "Everything: Expected `Colour`, got `Size` - at `$.colour`"),
        (
            {"moment": dt.datetime(1850, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=1172)))},
            "Everything: A UTC offset must be whole minutes, got "
            "`1850-01-01T00:00:00+00:19:32` - at `$.moment`",
        ),
    ],
)
def test_encoding_takes_no_stand_in_for_a_value(change, error):
    event = dataclasses.replace(sample(), **change)
    with pytest.raises(MessageEncodeError, match=re.escape(error)):
        to_dict(event)


def test_a_float_field_keeps_a_whole_number_as_written():
    @dataclass(frozen=True)
    class Measured(messagebus.Event):
        value: float

    assert to_dict(Measured(2)) == {"value": 2}
    assert to_dict(Measured(2.5)) == {"value": 2.5}
    assert from_dict(Measured, {"value": 2}).value == 2.0


class Mixed(enum.Enum):
    ONE = 1
    TWO = "two"


@dataclass(frozen=True)
class Computed(messagebus.Event):
    qty: int
    double: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "double", self.qty * 2)


def test_a_field_outside_init_is_left_out_and_computed_again():
    assert to_dict(Computed(3)) == {"qty": 3}
    assert from_dict(Computed, {"qty": 3}).double == 6
    with pytest.raises(
        MessageDecodeError, match="Computed: Object contains unknown field `double`"
    ):
        from_dict(Computed, {"qty": 3, "double": 6})


@pytest.mark.parametrize(
    "annotation, default, error",
    [
        (Mixed, dataclasses.MISSING, "Odd.value: <enum 'Mixed'>: an Enum's values must be all str"),
        (int, field(init=False), "Odd.value: a field with init=False needs a default"),
        (dataclasses.InitVar[int], 0, "Odd: dataclasses with `InitVar` fields are not supported"),
    ],
)
def test_what_msgspec_cannot_build_is_refused_by_the_check(annotation, default, error):
    namespace = {"__annotations__": {"value": annotation}}
    if default is not dataclasses.MISSING:
        namespace["value"] = default
    cls = dataclass(frozen=True)(type("Odd", (messagebus.Event,), namespace))
    with pytest.raises(MessageEncodeError, match=re.escape(error)):
        check_serializable(cls)
