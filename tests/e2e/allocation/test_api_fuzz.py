"""Whatever a client sends to a write route, the answer is never a server error."""

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import BatchFactory

pytestmark = pytest.mark.django_db

ROUTES = [
    ("post", "/api/batches"),
    ("post", "/add_batch"),
    ("patch", "/api/batches/b1"),
    ("post", "/api/allocations"),
    ("post", "/allocate"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = ["ref", "sku", "orderid", "qty", "eta"]
valid = st.fixed_dictionaries(
    {
        "ref": st.sampled_from(["b1", "b2", "b3"]),
        "sku": st.sampled_from(["LAMP", "CHAIR"]),
        "orderid": st.sampled_from(["o1", "o2"]),
        "qty": st.integers(min_value=1, max_value=20),
        "eta": st.none() | st.dates().map(str),
    }
)
junk = (
    json_values
    | st.text(max_size=300)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from(["", " ", "1.0", "2031-02-30", "a/b", "\x00", "\ud800", "9" * 5000])
)


def mutate(body: dict, changes: dict, dropped: set) -> dict:
    return {key: value for key, value in {**body, **changes}.items() if key not in dropped}


# Bodies like the routes' own, with a field or two wrong or missing.
near_miss = st.builds(
    mutate,
    valid,
    st.dictionaries(st.sampled_from(FIELDS), junk, max_size=2),
    st.sets(st.sampled_from(FIELDS), max_size=1),
)
json_bodies = (near_miss | json_values).map(lambda value: json.dumps(value).encode())
bodies = st.tuples(st.just("application/json"), json_bodies | st.binary(max_size=200)) | st.tuples(
    st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]),
    st.binary(max_size=200),
)


@pytest.fixture
def stock(db):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=1000)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_write_routes_never_fail_with_a_server_error(admin_client, stock, method, path):
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies)
    def send(body):
        content_type, data = body
        response = admin_client.generic(method.upper(), path, data, content_type=content_type)
        assert response.status_code < 500, response.content
        assert response.status_code != 415 or content_type != "application/json"

    send()


@pytest.mark.parametrize(
    "template", ["/api/batches/{}", "/api/allocations/{}", "/allocations/{}", "/api/batches?sku={}"]
)
def test_read_routes_never_fail_with_a_server_error(admin_client, stock, template):
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(name=st.text(max_size=300) | st.sampled_from(["b1", "LAMP", "o1"]))
    def read(name):
        response = admin_client.get(template.format(quote(name, safe="")))
        assert response.status_code < 500

    read()
