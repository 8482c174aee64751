"""The admin's login under attack, and its cookies and headers in production settings."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, start_gateway, stop_gateway

PASSWORD = "correct horse battery staple"
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("root-admin", "a@example.com", PASSWORD)


def login(client, password: str, address: str):
    return client.post(LOGIN, {"username": "root-admin", "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_the_sixth_wrong_login_is_locked_out(client, staff):
    for attempt in range(4):
        response = login(client, f"wrong-{attempt}", "10.1.2.3")
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content
    # The fifth failure locks the username at this address: it is answered with the
    # lockout page already, and so is everything after it, the right password included.
    assert login(client, "wrong-4", "10.1.2.3").status_code == 429
    for password in ("wrong-5", PASSWORD):
        locked = login(client, password, "10.1.2.3")
        assert locked.status_code == 429
        assert b"locked" in locked.content.lower()
    # Per username and address: the same user from elsewhere still logs in.
    assert login(client, PASSWORD, "10.9.9.9").status_code == 302


@pytest.mark.django_db
def test_a_success_before_the_limit_starts_the_count_again(client, staff):
    for _ in range(4):
        assert login(client, "wrong", "10.1.2.4").status_code == 200
    assert login(client, PASSWORD, "10.1.2.4").status_code == 302
    client.logout()
    for _ in range(4):
        assert login(client, "wrong", "10.1.2.4").status_code == 200
    assert login(client, PASSWORD, "10.1.2.4").status_code == 302


def _secure(set_cookie: list[str], name: str) -> str:
    (cookie,) = [c for c in set_cookie if c.startswith(name + "=")]
    return cookie


@pytest.mark.committed_db
def test_cookies_are_secure_and_hsts_is_sent_without_debug(committed, tmp_path, model_configs):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser(
        f"prod-{secrets.token_hex(3)}", "p@example.com", PASSWORD
    )
    gateway = start_gateway(
        tmp_path,
        {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto,https",
        },
    )
    origin = gateway.url.replace("http://", "https://")
    https = {"x-forwarded-proto": "https"}  # as the TLS-terminating proxy says
    try:
        with httpx.Client(base_url=gateway.url, headers=https, timeout=30) as client:
            page = client.get(LOGIN)
            assert page.status_code == 200
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            csrf_cookie = _secure(page.headers.get_list("set-cookie"), "csrftoken")
            assert "; Secure" in csrf_cookie
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
            posted = client.post(
                LOGIN,
                data={
                    "username": user.username,
                    "password": PASSWORD,
                    "csrfmiddlewaretoken": token,
                },
                # httpx keeps Secure cookies for https only: send it as a browser would.
                headers={
                    "cookie": csrf_cookie.split(";")[0],
                    "origin": origin,
                    "referer": origin + LOGIN,
                },
            )
            assert posted.status_code == 302, posted.text[:2000]
            session = _secure(posted.headers.get_list("set-cookie"), "sessionid")
            assert "; Secure" in session and "; HttpOnly" in session
    finally:
        stop_gateway(gateway)


def check_deploy(extra_env: dict[str, str]) -> str:
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "gateway.example.com",
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "CRITICAL"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_check_deploy_reports_only_the_documented_exceptions():
    """docs/deploy.md documents W005, W008 and W021; setting their variables clears them."""
    found = set(re.findall(r"\(([\w.]+\.[WE]\d+)\)", check_deploy({})))
    assert found == {"security.W005", "security.W008", "security.W021"}
    cleared = check_deploy(
        {
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
            "SECURE_HSTS_PRELOAD": "true",
            "SECURE_SSL_REDIRECT": "true",
        }
    )
    assert "System check identified no issues" in cleared, cleared
