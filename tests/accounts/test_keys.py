"""API keys: storage, authentication, model access, commands, revocation across processes."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command
from django.db import connection

from accounts.models import ApiKey
from tests.conftest import CHAT_MODEL, V08_MODEL

pytestmark = pytest.mark.committed_db

BODY = {"model": CHAT_MODEL, "prompt": "[[say:ok]]"}


def error(response) -> dict:
    return response.json()["error"]


def test_the_database_never_contains_a_key_secret(make_key, live_gateway):
    key, secret = make_key()
    with live_gateway.client(api_key=secret) as client:
        assert client.post("/generate", json=BODY).status_code == 200
    secret_part = secret.split("-", 3)[3]
    assert len(secret_part) >= 40
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            for row in cursor.fetchall():
                text = " ".join(str(value) for value in row)
                assert secret not in text and secret_part not in text, table
    key.refresh_from_db()
    assert key.secret_hash != secret and len(key.secret_hash) == 64
    assert key.display.endswith(secret[-4:]) and key.display.startswith("sk-gw-")
    assert key.matches(secret) and not key.matches(secret[:-1] + "x")


def test_missing_wrong_revoked_and_expired_keys_are_401(make_key, live_gateway):
    from django.utils import timezone

    revoked, revoked_secret = make_key()
    revoked.revoked_at = timezone.now()
    revoked.save()
    expired, expired_secret = make_key(expires_at=timezone.now())
    cases = {
        None: "didn't provide",
        "sk-gw-nope": "Incorrect",
        revoked_secret[:-2] + "xx": "Incorrect",
        revoked_secret: "revoked",
        expired_secret: "expired",
    }
    for secret, message in cases.items():
        with live_gateway.client(api_key=secret) as client:
            for path in ("/generate", "/v1/chat/completions", "/batch_generate"):
                response = client.post(path, json=BODY)
                assert response.status_code == 401, (secret, path)
                assert error(response)["code"] == "invalid_api_key"
                assert error(response)["type"] == "invalid_request_error"
                assert message in error(response)["message"]
                assert response.headers["x-request-id"]


def test_health_needs_no_key(live_gateway):
    with live_gateway.client(api_key=None) as client:
        assert client.get("/health").status_code == 200


def test_azure_api_key_header(make_key, live_gateway):
    _, secret = make_key()
    with live_gateway.client(api_key=None, headers={"api-key": secret}) as client:
        assert client.post("/generate", json=BODY).status_code == 200


def test_a_model_the_key_may_not_use_is_404(make_key, live_gateway):
    _, secret = make_key(models=[V08_MODEL])
    with live_gateway.client(api_key=secret) as client:
        hidden = client.post("/generate", json=BODY)
        assert hidden.status_code == 404
        assert error(hidden)["code"] == "model_not_found"
        unknown = client.post("/generate", json={**BODY, "model": "no-such-model"})
        assert (
            error(unknown)["message"].replace("no-such-model", CHAT_MODEL)
            == (error(hidden)["message"])
        )
        assert client.post("/generate", json={**BODY, "model": V08_MODEL}).status_code == 200


def test_key_allows(make_key):
    from accounts.services import Caller, KeyRecord, key_allows

    limited = KeyRecord.from_row(make_key(models=[V08_MODEL])[0])
    everything = KeyRecord.from_row(make_key()[0])
    assert key_allows(limited, V08_MODEL) and not key_allows(limited, CHAT_MODEL)
    assert key_allows(everything, CHAT_MODEL) and key_allows(everything, "anything")
    key = make_key(models=[V08_MODEL])[0]
    caller = Caller.from_row(key)
    assert caller.owner_id == key.owner_id and caller.key.id == key.pk
    assert caller.allows(V08_MODEL) and not caller.allows(CHAT_MODEL)


def test_createapikey_prints_the_secret_last_and_revokeapikey_revokes(
    live_gateway, capsys, committed, model_configs
):
    call_command("createapikey", "--name", "cli", "--owner", "cli-user", "--rpm", "100")
    out = capsys.readouterr().out.strip().splitlines()
    secret = out[-1]
    assert secret.startswith("sk-gw-")
    key = ApiKey.objects.get(public_id=secret.split("-")[2])
    assert key.rpm_limit == 100 and key.owner.username == "cli-user" and key.all_models
    with live_gateway.client(api_key=secret) as client:
        assert client.post("/generate", json=BODY).status_code == 200
        call_command("revokeapikey", key.display)
        time.sleep(1.05)
        assert client.post("/generate", json=BODY).status_code == 401


def test_a_revoked_key_fails_within_one_second_on_every_process(make_key, gateway_pairs):
    from accounts.services import key_revoke

    key, secret = make_key()
    clients = [gateway.client(api_key=secret) for gateway in gateway_pairs("database")]
    try:
        for client in clients:  # both processes have the key cached
            assert client.post("/generate", json=BODY).status_code == 200
        key_revoke(key=key)
        revoked_at = time.monotonic()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
        for client in clients:
            assert client.post("/generate", json=BODY).status_code == 401
    finally:
        for client in clients:
            client.close()


def test_last_used_is_recorded(make_key, live_gateway):
    key, secret = make_key()
    with live_gateway.client(api_key=secret) as client:
        client.post("/generate", json=BODY)
    deadline = time.monotonic() + 5
    while key.last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
        key.refresh_from_db()
    assert key.last_used_at is not None


def test_models_list_shows_only_what_the_key_may_use(make_key, live_gateway):
    _, secret = make_key(models=[V08_MODEL])
    with live_gateway.client(api_key=secret) as client:
        listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert listed == {V08_MODEL}
        assert client.get(f"/v1/models/{V08_MODEL}").status_code == 200
        hidden = client.get(f"/v1/models/{CHAT_MODEL}")
        assert hidden.status_code == 404
        assert error(hidden)["code"] == "model_not_found"
    with live_gateway.client() as owner:
        assert {CHAT_MODEL, V08_MODEL} <= {m["id"] for m in owner.get("/v1/models").json()["data"]}


@pytest.mark.parametrize(
    "pepper", ["", "short pepper", "p" * 64, "a pepper longer than a block " * 4]
)
def test_the_key_hash_is_hmac_sha256_under_the_pepper(settings, pepper):
    """hash_key computes HMAC-SHA256 from precomputed pads: the value must be exactly
    the standard HMAC's, or every stored key would stop matching. Peppers longer than
    SHA-256's 64-byte block are hashed first (RFC 2104); none derives from SECRET_KEY."""
    import hmac

    from accounts.models import _pepper, hash_key

    settings.API_KEY_PEPPER = pepper
    key = _pepper()
    assert (key == pepper.encode()) if pepper else len(key) == 32
    for raw in ["", "sk-gw-0123456789abcdef-" + "s" * 43, "ü" * 100]:
        assert hash_key(raw) == hmac.new(key, raw.encode(), "sha256").hexdigest()
