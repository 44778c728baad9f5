"""Links that caches can keep: one signed link per attachment per window, derivative links
that change when the derivative does, and public profiles with unsigned immutable links."""

from __future__ import annotations

import re

import pytest

from app.attachments.links import Links
from app.profiles import load_profiles
from tests.conftest import run_worker
from tests.helpers import jpeg_bytes


@pytest.fixture
def profiles(tmp_path, res):
    path = tmp_path / "profiles.toml"
    path.write_text('[profiles.pub]\npublic = true\ntypes = ["image/*"]\n'
                    '[profiles.pub.derivatives.thumb]\nwidth = 20\nheight = 20\n'
                    '[profiles.priv]\ntypes = ["image/*"]\n'
                    '[profiles.priv.derivatives.thumb]\nwidth = 20\nheight = 20\n')
    before = res.profiles, res.links
    res.rewire(profiles=load_profiles(path))
    res.rewire(links=Links(res.settings.public_url, res.settings.signing_key,
                      res.settings.download_url_ttl, public_profiles=res.profiles.public_names()))
    yield path
    res.rewire(profiles=before[0], links=before[1])


async def _stored(client, tenant, res, profile):
    r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": profile},
                          files={"file": ("a.jpg", jpeg_bytes(60, 40))})
    assert r.status_code == 201, r.text
    await run_worker(res)
    return (await client.get(f"/v1/attachments/{r.json()['id']}", headers=tenant.headers)).json()


def _local(res, url):
    return url.removeprefix(res.settings.public_url)


async def test_two_reads_in_one_window_give_the_same_links_and_caches_may_keep_them(
        client, tenant, res, profiles):
    att = await _stored(client, tenant, res, "priv")
    again = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    assert again["url"] == att["url"] and "token=" in att["url"]
    assert again["derivatives"]["thumb"]["url"] == att["derivatives"]["thumb"]["url"]
    r = await client.get(_local(res, att["url"]))
    assert r.status_code == 200
    max_age = int(re.fullmatch(r"public, max-age=(\d+)", r.headers["cache-control"]).group(1))
    assert 0 < max_age <= 2 * res.settings.download_url_ttl
    # with the API key: the key holder's alone
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.headers["cache-control"].startswith("private")
    # without a key or a token, a file of a profile that is not public: 401
    r = await client.get(f"/v1/attachments/{att['id']}/content")
    assert r.status_code == 401


async def test_a_public_profile_has_unsigned_immutable_links(client, tenant, res, profiles):
    att = await _stored(client, tenant, res, "pub")
    assert att["url"].endswith(f"/v1/attachments/{att['id']}/content")
    thumb = att["derivatives"]["thumb"]["url"]
    assert thumb.endswith(f"/derivatives/thumb?v={att['generation']}")
    r = await client.get(_local(res, att["url"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    r = await client.get(_local(res, thumb))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    # a link to another generation of the derivative: served, but not for keeps
    r = await client.get(f"/v1/attachments/{att['id']}/derivatives/thumb?v=0")
    assert r.status_code == 200 and r.headers["cache-control"] == "public, no-cache"
    # valid while the attachment lives
    await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    r = await client.get(_local(res, att["url"]))
    assert r.status_code in (404, 409, 410), r.text


async def test_a_reprocessed_derivative_gets_a_new_link(client, tenant, res, profiles):
    att = await _stored(client, tenant, res, "priv")
    r = await client.post(f"/v1/attachments/{att['id']}/reprocess", headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res)
    after = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    assert after["derivatives"]["thumb"]["url"] != att["derivatives"]["thumb"]["url"]
    assert after["url"] == att["url"]  # the original did not change
    r = await client.get(_local(res, after["derivatives"]["thumb"]["url"]))
    assert r.status_code == 200


def test_public_must_be_a_boolean(tmp_path):
    from app.profiles import ProfileError

    path = tmp_path / "p.toml"
    path.write_text('[profiles.x]\npublic = "yes"\n')
    with pytest.raises(ProfileError, match="'public'"):
        load_profiles(path)
