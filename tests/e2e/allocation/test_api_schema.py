import json
import re

import pytest
from django.core.management import call_command

PATHS = {
    "/api/batches": {"get", "post"},
    "/api/batches/{ref}": {"get", "patch"},
    "/api/allocations": {"post"},
    "/api/allocations/{orderid}": {"get"},
    "/add_batch": {"post"},
    "/allocate": {"post"},
    "/allocations/{orderid}": {"get"},
    "/api/orders": {"post"},
    "/api/orders/{orderid}": {"get"},
    "/api/orders/{orderid}/confirm": {"post"},
}
# The responses each operation must describe, besides its success.
ERRORS = {
    ("/api/batches", "get"): {"400", "401"},
    ("/api/batches", "post"): {"400", "401", "403", "409"},
    ("/api/batches/{ref}", "get"): {"401", "404"},
    ("/api/batches/{ref}", "patch"): {"400", "401", "403", "404"},
    ("/api/allocations", "post"): {"400", "401", "403", "409"},
    ("/api/allocations/{orderid}", "get"): {"401", "404"},
    ("/add_batch", "post"): {"400", "401", "403", "409"},
    ("/allocate", "post"): {"400", "401", "403", "409"},
    ("/allocations/{orderid}", "get"): {"401", "404"},
    ("/api/orders", "post"): {"400", "401", "403", "409"},
    ("/api/orders/{orderid}", "get"): {"401", "404"},
    ("/api/orders/{orderid}/confirm", "post"): {"401", "403", "404", "409"},
}
BODILESS = {("/api/orders/{orderid}/confirm", "post")}  # the path says it all


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "schema.json"
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--format=openapi-json", f"--file={path}"
    )
    return json.loads(path.read_text())


def test_schema_describes_every_route_once(schema):
    assert {path: set(ops) for path, ops in schema["paths"].items()} == PATHS


@pytest.mark.parametrize(("path", "method"), list(ERRORS))
def test_each_operation_describes_its_errors(schema, path, method):
    responses = schema["paths"][path][method]["responses"]
    success = {code for code in responses if code.startswith("2")}

    assert len(success) == 1
    assert set(responses) - success == ERRORS[path, method]
    for code in ERRORS[path, method]:
        assert responses[code]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("path", "method"), [op for op in ERRORS if op[1] in ("post", "patch") and op not in BODILESS]
)
def test_each_write_describes_its_json_body(schema, path, method):
    body = schema["paths"][path][method]["requestBody"]

    assert body["required"] is True
    assert set(body["content"]) == {"application/json"}


def test_batch_patch_requires_its_quantity(schema):
    ref = schema["paths"]["/api/batches/{ref}"]["patch"]["requestBody"]["content"]
    name = ref["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert schema["components"]["schemas"][name]["required"] == ["qty"]


def identifier_schemas(schema):
    """The schemas of the identifiers the API reads: request bodies' and the SKU filter's."""
    components = schema["components"]["schemas"]
    bodies = {"BatchInput": ["ref", "sku"], "AllocateInput": ["orderid", "sku"]}
    for name, fields in bodies.items():
        for field in fields:
            yield f"{name}.{field}", components[name]["properties"][field]
    (sku,) = schema["paths"]["/api/batches"]["get"]["parameters"]
    yield "sku filter", sku["schema"]


def test_identifiers_are_strings_the_server_takes(schema):
    """The server refuses what the pattern refuses (tests/e2e/allocation/test_api_input.py)."""
    for name, field in identifier_schemas(schema):
        assert field["type"] == "string", name
        assert field["maxLength"] == 255, name
        for taken in ("b1", "a.b", "..b", "партия-1"):
            assert re.search(field["pattern"], taken), (name, taken)
        for refused in ("", ".", "..", "a/b", "a b"):
            assert not re.search(field["pattern"], refused), (name, refused)


@pytest.mark.django_db
def test_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/")
    redoc = client.get("/api/redoc/")

    assert schema.status_code == 200
    assert b"/api/batches/{ref}" in schema.content
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert redoc.status_code == 200
    assert b"redoc.standalone.js" in redoc.content
    assert b'spec-url="/api/schema/"' in redoc.content
