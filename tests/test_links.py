"""Signed download links, as a unit: each token opens exactly one file until it expires."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import TimestampSigner

from app.attachments.links import Links, link_expiry
from app.errors import Forbidden


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_a_token_opens_its_own_file_and_nothing_else():
    links = Links("https://files.example/", b"k" * 32, ttl=60)
    a, b = uuid.uuid4(), uuid.uuid4()
    content = token_of(links.content_url(a))
    thumb = token_of(links.derivative_url(a, "thumb"))
    links.verify(content, a)
    links.verify(thumb, a, "thumb")
    for token, att, name in [(content, b, None), (content, a, "thumb"), (thumb, a, None),
                             (thumb, a, "small"), (thumb, b, "thumb")]:
        with pytest.raises(Forbidden, match="not valid"):
            links.verify(token, att, name)


def test_tampered_tokens_and_other_secrets_are_refused():
    links = Links("https://files.example", b"k" * 32, ttl=60)
    att = uuid.uuid4()
    token = token_of(links.content_url(att))
    # a character inside the signature (the last one of a base64 string may carry only
    # padding bits, which decode the same whatever they are: a flaky tamper)
    cut = token.rindex(".") + 1
    tampered = token[:cut] + ("A" if token[cut] != "A" else "B") + token[cut + 1:]
    for bad in [tampered, "", ".", "x.y", token[::-1]]:
        with pytest.raises(Forbidden):
            links.verify(bad, att)
    with pytest.raises(Forbidden):
        Links("https://files.example", b"j" * 32, ttl=60).verify(token, att)


class Clock:
    def __init__(self, now: float = 1_750_000_000.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_links_expire():
    clock = Clock()
    links = Links("https://files.example", b"k" * 32, ttl=60, clock=clock)
    att = uuid.uuid4()
    token = token_of(links.content_url(att))
    expires = link_expiry(clock.now, 60)
    assert 60 <= expires - clock.now <= 120  # at least the TTL, at most two
    clock.now = expires
    links.verify(token, att)
    clock.now += 1
    with pytest.raises(Forbidden, match="expired"):
        links.verify(token, att)


def test_one_link_per_window_so_caches_can_keep_what_it_serves():
    clock = Clock()
    clock.now = 6000.0  # the start of a window of 60 s
    links = Links("https://files.example", b"k" * 32, ttl=60, clock=clock)
    att = uuid.uuid4()
    first = links.content_url(att), links.derivative_url(att, "thumb", 3)
    for step in (1, 30, 59.9):
        clock.now = 6000.0 + step
        assert (links.content_url(att), links.derivative_url(att, "thumb", 3)) == first
    clock.now = 6060.0  # the next window: new links
    assert links.content_url(att) != first[0]
    clock.now = 6000.0
    # a rebuilt derivative (another generation) has another link
    assert links.derivative_url(att, "thumb", 4) != first[1]
    token = token_of(first[1])
    links.verify(token, att, "thumb", 3)
    with pytest.raises(Forbidden):
        links.verify(token, att, "thumb", 4)


def test_the_expiry_travels_in_the_link_not_in_the_receiving_instances_settings():
    clock = Clock()
    long_lived = Links("https://files.example", b"k" * 32, ttl=7200, clock=clock)
    short_lived = Links("https://files.example", b"k" * 32, ttl=60, clock=clock)
    att = uuid.uuid4()
    long_token = token_of(long_lived.content_url(att))
    short_token = token_of(short_lived.derivative_url(att, "thumb"))
    long_expires = link_expiry(clock.now, 7200)
    clock.now += 3600
    short_lived.verify(long_token, att)  # what the issuing instance promised
    with pytest.raises(Forbidden, match="expired"):
        long_lived.verify(short_token, att, "thumb")
    clock.now = long_expires + 1
    with pytest.raises(Forbidden, match="expired"):
        short_lived.verify(long_token, att)


def test_links_for_events_last_the_event_ttl_and_the_others_do_not():
    clock = Clock()
    links = Links("https://files.example", b"k" * 32, ttl=60, event_ttl=3600, clock=clock)
    att = uuid.uuid4()
    in_event = token_of(links.for_events().derivative_url(att, "thumb"))
    in_answer = token_of(links.derivative_url(att, "thumb"))
    clock.now += 3600
    links.verify(in_event, att, "thumb")
    with pytest.raises(Forbidden, match="expired"):
        links.verify(in_answer, att, "thumb")
    assert links.ttl == 60  # for_events() left the API's own links alone
    # an event_ttl below the TTL (a schedule of no retries) still gets the TTL
    assert Links("https://files.example", b"k" * 32, ttl=60, event_ttl=5).event_ttl == 60


def test_links_of_the_former_format_fail_closed():
    """Links that carried their signing time (checked against the receiver's TTL) are
    refused as not valid, not taken for links with an expiry."""
    links = Links("https://files.example", b"k" * 32, ttl=60)
    att = uuid.uuid4()
    old = TimestampSigner(b"k" * 32, salt="stowage.download", sep=".")
    subject = f"{att}/"
    token = old.sign(subject).decode()[len(subject) + 1:]
    with pytest.raises(Forbidden, match="not valid"):
        links.verify(token, att)


def test_the_url_names_the_file_and_the_token_is_short():
    links = Links("https://files.example/", b"k" * 32, ttl=60)
    att = uuid.uuid4()
    url = links.derivative_url(att, "thumb")
    assert url.startswith(f"https://files.example/v1/attachments/{att}/derivatives/thumb?token=")
    assert str(att) not in token_of(url) and len(token_of(url)) < 48
