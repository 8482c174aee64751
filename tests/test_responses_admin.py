"""Stored responses in the admin: listed, searched, shown, deleted; never added or edited."""

from __future__ import annotations

import pytest
from django.utils import timezone

from llmgateway.models import StoredResponse

pytestmark = pytest.mark.django_db


def test_stored_responses_are_read_only(admin_client):
    row = StoredResponse.objects.create(
        id="resp_admin1",
        created_at=timezone.now(),
        model="dev-chat",
        context=[{"id": "msg_1", "type": "message"}],
        body={"id": "resp_admin1", "output": []},
    )
    listing = admin_client.get("/admin/llmgateway/storedresponse/?q=resp_admin1").content.decode()
    assert "resp_admin1" in listing
    detail = admin_client.get(f"/admin/llmgateway/storedresponse/{row.pk}/change/")
    assert detail.status_code == 200 and "msg_1" in detail.content.decode()
    assert admin_client.get("/admin/llmgateway/storedresponse/add/").status_code == 403
    deleted = admin_client.post(
        f"/admin/llmgateway/storedresponse/{row.pk}/delete/", {"post": "yes"}
    )
    assert deleted.status_code == 302
    assert not StoredResponse.objects.filter(pk=row.pk).exists()
