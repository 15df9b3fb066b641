"""An order's commands check themselves as they are built."""

import pytest

from allocation.commands import MAX_ORDER_LINES, Line, PlaceOrder
from allocation.exceptions import InvalidCommand


def test_an_order_takes_lines_of_distinct_skus():
    order = PlaceOrder("o1", (Line("LAMP", 1), Line("DESK", 2)))
    assert [line.sku for line in order.lines] == ["LAMP", "DESK"]


@pytest.mark.parametrize(
    "lines",
    [(), (Line("LAMP", 1), Line("LAMP", 2)), tuple(Line(f"S{n}", 1) for n in range(101))],
    ids=["none", "a SKU twice", "too many"],
)
def test_an_order_refuses_no_line_a_sku_twice_or_too_many(lines):
    with pytest.raises(InvalidCommand) as raised:
        PlaceOrder("o1", lines)
    assert raised.value.errors == {"lines": [f"1 to {MAX_ORDER_LINES} lines, each of its own SKU"]}


def test_a_line_obeys_the_rules_of_its_fields():
    with pytest.raises(InvalidCommand, match="Invalid Line: qty: 0 is not between"):
        Line("LAMP", 0)
