import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

BATCH = {"ref": "b9", "sku": "LAMP", "qty": 10, "eta": None}
LINE = {"orderid": "o1", "sku": "LAMP", "qty": 1}
READS = ["/api/batches", "/api/batches/b1", "/api/allocations/o1", "/allocations/o1"]
# (method, path, body, the permission it needs)
WRITES = [
    ("post", "/api/batches", BATCH, "add_batch"),
    ("post", "/add_batch", BATCH, "add_batch"),
    ("patch", "/api/batches/b1", {"qty": 50}, "change_batch"),
    ("post", "/api/allocations", LINE, "add_orderline"),
    ("post", "/allocate", LINE, "add_orderline"),
]
WRITE_IDS = [f"{method} {path}" for method, path, _, _ in WRITES]


@pytest.fixture(autouse=True)
def batch():
    return BatchFactory(reference="b1", product__sku="LAMP")


def client_for(user=None):
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_signed_in_user(path):
    response = APIClient().get(path)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {"message": "Authentication credentials were not provided."}


@pytest.mark.parametrize("path", ["/api/batches", "/api/batches/b1"])
def test_any_signed_in_user_may_read(path):
    assert client_for(UserFactory()).get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "permission"), WRITES, ids=WRITE_IDS)
def test_writes_need_a_signed_in_user(method, path, body, permission):
    assert getattr(APIClient(), method)(path, body).status_code == 401


@pytest.mark.parametrize(("method", "path", "body", "permission"), WRITES, ids=WRITE_IDS)
def test_writes_need_their_model_permission(method, path, body, permission):
    others = [p for _, _, _, p in WRITES if p != permission]
    client = client_for(UserFactory(permissions=others))

    response = getattr(client, method)(path, body)

    assert response.status_code == 403
    assert response.json() == {"message": "You do not have permission to perform this action."}


@pytest.mark.parametrize(("method", "path", "body", "permission"), WRITES, ids=WRITE_IDS)
def test_writes_with_their_model_permission(method, path, body, permission):
    client = client_for(UserFactory(permissions=[permission]))

    assert getattr(client, method)(path, body).status_code in (200, 201, 202)


def test_token_authentication():
    user = UserFactory(permissions=["add_batch"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    assert client.post("/api/batches", BATCH).status_code == 201


def test_a_wrong_token_is_refused():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-key")

    response = client.get("/api/batches")

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid token."}


def test_session_authentication_checks_csrf_on_writes():
    UserFactory(username="clerk", permissions=["add_batch"])
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="clerk", password="secret")

    assert client.get("/api/batches").status_code == 200
    response = client.post("/api/batches", BATCH)
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]


@pytest.mark.parametrize(("method", "path", "body", "permission"), WRITES, ids=WRITE_IDS)
def test_anonymous_writes_when_the_api_allows_anonymous_use(
    method, path, body, permission, settings
):
    settings.API_ALLOW_ANONYMOUS = True

    assert getattr(APIClient(), method)(path, body).status_code in (200, 201, 202)


def test_anonymous_use_is_read_at_each_request(settings):
    client = APIClient()
    settings.API_ALLOW_ANONYMOUS = True
    assert client.get("/api/batches").status_code == 200

    settings.API_ALLOW_ANONYMOUS = False
    assert client.get("/api/batches").status_code == 401
