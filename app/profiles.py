"""Profiles: what an upload may be (size, types, pixels), how long it may wait in the cache,
and whether the metadata of its images is removed."""

from __future__ import annotations

import difflib
import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import UnknownProfile
from app.media.derivatives import DerivativeSpec
from app.media.sniff import known_types
from app.media.strip import STRIPPABLE

DEFAULT = "default"
SCRIPTABLE_TYPES = {"image/svg+xml", "text/html", "application/xhtml+xml"}


class ProfileError(Exception):
    """The profiles file is invalid; the message names the file, profile and key."""


@dataclass(frozen=True)
class Profile:
    name: str
    max_size: int | None = None
    types: tuple[str, ...] = ()  # empty: any type
    cache_ttl: int | None = None
    max_pixels: int | None = None
    derivatives: dict[str, DerivativeSpec] = field(default_factory=dict)
    # unsigned links that never expire, served with Cache-Control immutable: for files meant
    # to be public (product images, avatars shown to anyone)
    public: bool = False
    # remove EXIF/GPS, XMP, IPTC and comments from JPEG, PNG and WebP originals (None: the
    # default, see strips_metadata)
    strip_metadata: bool | None = None

    @property
    def strips_metadata(self) -> bool:
        """``strip_metadata`` as set, else whether this is a profile for images: one with
        derivatives, or whose ``types`` admit JPEG, PNG or WebP. A profile that names no types
        is a general file store and keeps every file byte for byte."""
        if self.strip_metadata is not None:
            return self.strip_metadata
        return bool(self.derivatives) or (
            bool(self.types) and any(self.allows_type(t) for t in STRIPPABLE))

    def strips(self, mime_type: str) -> bool:
        """Whether a file of this (sniffed) type is stored without its metadata."""
        return mime_type in STRIPPABLE and self.strips_metadata

    def allows_type(self, mime_type: str) -> bool:
        if not self.types or mime_type in self.types:
            return True
        # "image/*" means raster images: SVG is a document that runs scripts, so it must be
        # named explicitly to be allowed
        if mime_type in SCRIPTABLE_TYPES:
            return False
        return any(fnmatch.fnmatchcase(mime_type, t) for t in self.types)

    def size_limit(self, global_max: int) -> int:
        return min(self.max_size, global_max) if self.max_size else global_max


class Profiles:
    def __init__(self, profiles: dict[str, Profile]) -> None:
        self._profiles = {DEFAULT: Profile(DEFAULT), **profiles}

    def get(self, name: str | None) -> Profile:
        name = name or DEFAULT
        try:
            return self._profiles[name]
        except KeyError:
            raise UnknownProfile(
                f"unknown profile {name!r}; known: {', '.join(sorted(self._profiles))}"
            ) from None

    def get_or_default(self, name: str) -> Profile:
        """For rows recorded under a profile since removed from the file."""
        return self._profiles.get(name) or self._profiles[DEFAULT]

    def max_pixels(self) -> int:
        return max((p.max_pixels or 0 for p in self._profiles.values()), default=0)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def public_names(self) -> frozenset[str]:
        return frozenset(name for name, p in self._profiles.items() if p.public)


_KEYS = {"max_size", "types", "cache_ttl", "max_pixels", "derivatives", "public",
         "strip_metadata"}


def _unknown_type(pattern: str) -> str | None:
    """Why a `types` entry can never match a sniffed type, or None. Types come from the bytes
    (app.media.sniff), so a name the sniffer never answers ("image/jpg") would refuse every
    upload it was meant to allow."""
    known = known_types()
    if "*" in pattern:
        if any(fnmatch.fnmatchcase(t, pattern) for t in known):
            return None
        return f"{pattern!r} matches no type the sniffer reports"
    if pattern in known:
        return None
    close = difflib.get_close_matches(pattern, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{pattern!r} is not a type the sniffer reports{hint}"


def _may_be_image(pattern: str) -> bool:
    return pattern.startswith("image/") or pattern == "*/*"


def load_profiles(path: Path | None) -> Profiles:
    if path is None:
        return Profiles({})
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: {e}") from None
    unknown = sorted(set(data) - {"profiles"})
    if unknown:  # "[profile.avatar]" would otherwise leave every profile out, silently
        raise ProfileError(f"{path}: unknown table [{unknown[0]}]: profiles are defined as"
                           " [profiles.NAME]")
    raw = data.get("profiles", {})
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: [profiles] must be a table")
    return Profiles({name: _parse_profile(path, name, body) for name, body in raw.items()})


def _parse_profile(path: Path, name: str, body: Any) -> Profile:
    def fail(key: str, msg: str) -> ProfileError:
        return ProfileError(f"{path}: profile {name!r}, key {key!r}: {msg}")

    if not isinstance(body, dict):
        raise ProfileError(f"{path}: profile {name!r} must be a table")
    for key in body:
        if key not in _KEYS:
            raise fail(key, f"unknown key (expected one of {', '.join(sorted(_KEYS))})")
    ints = {}
    for key in ("max_size", "cache_ttl", "max_pixels"):
        value = body.get(key)
        positive_int = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if value is not None and not positive_int:
            raise fail(key, "must be a positive integer")
        ints[key] = value
    types = body.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) and "/" in t for t in types):
        raise fail("types", 'must be a list of MIME types such as "image/png" or "image/*"')
    for t in types:
        problem = _unknown_type(t)
        if problem:
            raise fail("types", problem)
    raw_derivatives = body.get("derivatives", {})
    if not isinstance(raw_derivatives, dict):
        raise fail("derivatives", "must be a table")
    derivatives = {}
    for dname, draw in raw_derivatives.items():
        if not isinstance(draw, dict):
            raise fail(f"derivatives.{dname}", "must be a table")
        try:
            derivatives[dname] = DerivativeSpec.from_profile(dname, draw)
        except ValueError as e:
            raise fail(f"derivatives.{dname}", str(e)) from None
    public = body.get("public", False)
    if not isinstance(public, bool):
        raise fail("public", "must be true or false")
    if derivatives and types and not any(_may_be_image(t) for t in types):
        raise fail("derivatives", "derivatives are rendered from images, and `types` allows"
                   " none: every upload would fail")
    strip = body.get("strip_metadata")
    if strip is not None and not isinstance(strip, bool):
        raise fail("strip_metadata", "must be true or false")
    return Profile(name=name, types=tuple(types), derivatives=derivatives, public=public,
                   strip_metadata=strip, **ints)
