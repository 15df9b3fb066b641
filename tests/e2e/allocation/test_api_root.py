"""``/``: the API's root lists where every route is, for clients and the admin's "View site"."""

import re
from urllib.parse import urlsplit

import pytest
from django.urls import get_resolver, resolve

# Each link, and the route it must lead to.
LINKS = {
    "batches": "allocation:batches",
    "batch": "allocation:batch",
    "allocations": "allocation:allocations",
    "order-allocations": "allocation:order-allocations",
    "orders": "allocation:orders",
    "order": "allocation:order",
    "order-confirmation": "allocation:order-confirmation",
    "add-batch": "allocation:add-batch",
    "allocate": "allocation:allocate",
    "book-order-allocations": "allocation:book-order-allocations",
    "schema": "schema",
    "docs": "docs",
    "redoc": "redoc",
    "admin": "admin:index",
}


@pytest.fixture
def root(client, db):
    """The root as an anonymous client sees it."""
    response = client.get("/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return response.json()


def test_the_root_needs_no_sign_in_and_links_every_route(root):
    assert set(root) == set(LINKS)
    for key, url in root.items():
        assert url.startswith("http://testserver/"), key
        # A parameter is a URI template: {ref}, {orderid}.
        path = re.sub(r"\{\w+\}", "x-1", urlsplit(url).path)
        assert resolve(path).view_name == LINKS[key], key


def test_the_root_gives_routes_their_parameters(root):
    assert root["batch"] == "http://testserver/api/batches/{ref}"
    assert root["book-order-allocations"] == "http://testserver/allocations/{orderid}"
    assert root["order-confirmation"] == "http://testserver/api/orders/{orderid}/confirm"


def test_the_root_forgets_no_named_route_of_the_api(root):
    named = {
        f"allocation:{name}"
        for name in get_resolver().namespace_dict["allocation"][1].reverse_dict
        if isinstance(name, str)
    }
    assert named - {"allocation:root"} <= set(LINKS.values())


def test_the_admin_view_site_link_leads_to_the_root(admin_client):
    page = admin_client.get("/admin/").content.decode()

    assert re.search(r'<a href="(/)">View site</a>', page)
    assert admin_client.get("/", HTTP_ACCEPT="application/json").json()["admin"].endswith("/admin/")
