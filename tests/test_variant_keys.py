"""Where image variants live (issue 21): one key per attachment, generation and normalised
parameters, under the attachment's prefix; fsck takes the current generation's for live and
an older generation's for orphans."""

from __future__ import annotations

from uuid import uuid4

from app.attachments import keys
from app.ops.fsck_keys import LIVE, ORPHAN, UNREFERENCED, Owners, classify_store, parse_key


def test_one_key_per_variant_under_the_attachment():
    app, att = uuid4(), uuid4()
    a = keys.variant_key(app, att, 3, "fit=cover&format=webp&h=100&q=80&w=100", ".webp")
    assert a == keys.variant_key(app, att, 3, "fit=cover&format=webp&h=100&q=80&w=100", ".webp")
    assert a.startswith(keys.prefix(app, att)) and a.startswith(keys.variants_prefix(app, att, 3))
    assert a != keys.variant_key(app, att, 3, "fit=cover&format=webp&h=100&q=81&w=100", ".webp")
    assert a != keys.variant_key(app, att, 4, "fit=cover&format=webp&h=100&q=80&w=100", ".webp")
    odd = keys.variant_key(app, att, 3, "../../etc/passwd?w=1", ".png")
    assert "/../" not in odd and odd.count("/") == a.count("/")


def test_fsck_keeps_the_current_generations_variants_only():
    app, att = uuid4(), uuid4()
    row = {"app_id": app, "state": "stored", "storage": "store", "generation": 5,
           "key": keys.store_key(app, att, "image/jpeg"), "derivatives": {},
           "purged_at": None}
    owners = Owners(attachments={att: row})
    current = keys.variant_key(app, att, 5, "w=10", ".webp")
    old = keys.variant_key(app, att, 4, "w=10", ".webp")
    assert classify_store(current, parse_key(current), owners) == (LIVE, None)
    assert classify_store(old, parse_key(old), owners) == (ORPHAN, UNREFERENCED)
