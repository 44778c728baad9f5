"""Secret rotation with an overlap: after PATCH {"rotate_secret": true} the replaced secret
keeps signing beside the new one (two signatures in webhook-signature) for
STOWAGE_WEBHOOK_SECRET_OVERLAP seconds, so a receiver holding either verifies the delivery
with the reference standardwebhooks library; afterwards only the new one signs. Deliveries go
to a real HTTP receiver through the real worker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import run_worker
from tests.factories import age_webhooks
from tests.receiver import Received
from tests.test_webhooks import hooks, receiver, subscribe  # noqa: F401

pytestmark = pytest.mark.usefixtures("receiver")


async def ping(res, client, tenant, endpoint_id, receiver) -> Received:  # noqa: F811
    """Send a webhook.test and return what the receiver got."""
    before = len(receiver.received)
    r = await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    assert r.status_code in (200, 201, 202), r.text
    await run_worker(res)
    assert len(receiver.received) == before + 1
    return receiver.received[-1]


async def rotate(client, tenant, endpoint_id) -> dict:
    r = await client.patch(f"/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers,
                           json={"rotate_secret": True})
    assert r.status_code == 200, r.text
    return r.json()


def verifies(secret: str, got: Received) -> bool:
    try:
        event = Webhook(secret).verify(got.body, got.headers)
    except WebhookVerificationError:
        return False
    assert event["type"] == "webhook.test"
    return True


async def test_both_secrets_sign_during_the_overlap(hooks, receiver):  # noqa: F811
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url)
    old = ep["secret"]
    assert ep["previous_secret_expires_at"] is None
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert len(got.headers["webhook-signature"].split(" ")) == 1 and verifies(old, got)

    rotated = await rotate(client, tenant, ep["id"])
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    # the default overlap: a day
    ends = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert abs((ends - datetime.now(UTC)).total_seconds() - 86400) < 60
    fetched = await client.get(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers)
    assert fetched.json()["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    assert "previous_secret" not in fetched.json()  # the old secret is never shown again

    got = await ping(res, client, tenant, ep["id"], receiver)
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    # the new secret's first, then the old one's
    only = {k: v for k, v in got.headers.items() if k != "webhook-signature"}
    assert verifies(new, Received({**only, "webhook-signature": signatures[0]}, got.body, 0))
    assert verifies(old, Received({**only, "webhook-signature": signatures[1]}, got.body, 0))
    # a receiver with either secret accepts the delivery as sent; another secret does not
    assert verifies(new, got) and verifies(old, got)
    assert not verifies("whsec_" + "A" * 43 + "=", got)


@pytest.mark.settings(webhook_secret_overlap=2)
async def test_after_the_overlap_only_the_new_secret_signs(hooks, receiver):  # noqa: F811
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url)
    old = ep["secret"]
    new = (await rotate(client, tenant, ep["id"]))["secret"]
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert verifies(old, got) and verifies(new, got)

    await age_webhooks(res, 2.2)  # past the overlap of 2 s
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert len(got.headers["webhook-signature"].split(" ")) == 1
    assert verifies(new, got) and not verifies(old, got)
    fetched = await client.get(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers)
    assert fetched.json()["previous_secret_expires_at"] is None


async def test_rotating_again_keeps_only_the_secret_just_replaced(hooks, receiver):  # noqa: F811
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url)
    first = ep["secret"]
    second = (await rotate(client, tenant, ep["id"]))["secret"]
    third = (await rotate(client, tenant, ep["id"]))["secret"]
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verifies(third, got) and verifies(second, got) and not verifies(first, got)
    # a PATCH that does not rotate leaves the overlap as it is
    r = await client.patch(f"/v1/webhook-endpoints/{ep['id']}", headers=tenant.headers,
                           json={"description": "renamed"})
    assert r.json()["secret"] == third and r.json()["previous_secret_expires_at"]
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert verifies(third, got) and verifies(second, got)


@pytest.mark.settings(webhook_secret_overlap=0)
async def test_an_overlap_of_zero_stops_the_old_secret_at_once(hooks, receiver):  # noqa: F811
    res, client, tenant = hooks
    ep = await subscribe(client, tenant, receiver.url)
    rotated = await rotate(client, tenant, ep["id"])
    assert rotated["previous_secret_expires_at"] is None
    got = await ping(res, client, tenant, ep["id"], receiver)
    assert verifies(rotated["secret"], got) and not verifies(ep["secret"], got)
