import pytest

from messagebus.wording import listed, plural


@pytest.mark.parametrize(
    ("items", "said"),
    [
        ([], ""),
        (["a"], "a"),
        (["a", "b"], "a and b"),
        (["a", "b", "c"], "a, b and c"),
    ],
)
def test_listed_joins_with_commas_and_a_last_and(items, said):
    assert listed(items) == said


def test_plural_takes_an_irregular_plural():
    assert [plural(n, "delivery", "deliveries") for n in (0, 1, 2)] == [
        "0 deliveries", "1 delivery", "2 deliveries",
    ]  # fmt: skip
