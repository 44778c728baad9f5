"""Profiles: what an upload may be (size, types, pixels), how long it may wait in the cache,
and whether the metadata of its images is removed."""

from __future__ import annotations

import difflib
import fnmatch
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from app.errors import UnknownProfile
from app.media.derivatives import DerivativeName, DerivativeSpec
from app.media.sniff import known_types
from app.media.strip import STRIPPABLE

DEFAULT = "default"
SCRIPTABLE_TYPES = {"image/svg+xml", "text/html", "application/xhtml+xml"}


TRANSFORM_FORMATS = ("webp", "jpeg", "png", "avif")


class Transforms(BaseModel):
    """``[profiles.NAME.transforms]``: the image variants a client may ask for on request
    (GET /v1/attachments/{id}/image), bounded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_width: PositiveInt
    max_height: PositiveInt
    formats: tuple[Literal["webp", "jpeg", "png", "avif"], ...] = Field(
        default=TRANSFORM_FORMATS, strict=False, min_length=1)


class ProfileError(Exception):
    """The profiles file is invalid; the message names the file, profile and key."""


class Profile(BaseModel):
    """One ``[profiles.NAME]`` table. Strict: TOML's types as they are, no coercion, and an
    unknown key is an error (a misspelt limit would otherwise be no limit)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_size: PositiveInt | None = None
    # empty: any type; TOML gives a list
    types: tuple[str, ...] = Field(default=(), strict=False)
    cache_ttl: PositiveInt | None = None
    max_pixels: PositiveInt | None = None
    derivatives: dict[DerivativeName, DerivativeSpec] = {}
    # unsigned links that never expire, served with Cache-Control immutable: for files meant
    # to be public (product images, avatars shown to anyone)
    public: bool = False
    # remove EXIF/GPS, XMP, IPTC and comments from JPEG, PNG and WebP originals (None: the
    # default, see strips_metadata)
    strip_metadata: bool | None = None
    # every file scanned by ClamAV (STOWAGE_CLAMD_URL) during promotion, before any byte of it
    # reaches the store; an infected one fails (error.code "infected") and is quarantined
    scan: bool = False
    # image variants on request; None: refused (422)
    transforms: Transforms | None = None
    # the table's name in the file: not a key of the table (ProfilesFile sets it)
    _name: str = PrivateAttr(default=DEFAULT)

    @cached_property  # read on every upload; pydantic's path to a private attribute is slow
    def name(self) -> str:
        return self._name

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        problems = [_unknown_type(t) for t in types]
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))
        return types

    @field_validator("derivatives")
    @classmethod
    def _rendered_from_images(cls, derivatives: dict[str, DerivativeSpec],
                              info: ValidationInfo) -> dict[str, DerivativeSpec]:
        types = info.data.get("types", ())
        if derivatives and types and not any(_may_have_picture(t) for t in types):
            raise ValueError("derivatives are rendered from images, PDFs and videos, and"
                             " `types` allows none: every upload would fail")
        return derivatives

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
        self._profiles = {DEFAULT: Profile(), **profiles}

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

    def scanning_names(self) -> list[str]:
        return sorted(name for name, p in self._profiles.items() if p.scan)


def _unknown_type(pattern: str) -> str | None:
    """Why a `types` entry can never match a sniffed type, or None. Types come from the bytes
    (app.media.sniff), so a name the sniffer never answers ("image/jpg") would refuse every
    upload it was meant to allow."""
    if "/" not in pattern:
        return f'{pattern!r} is not a MIME type such as "image/png" or "image/*"'
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


def _may_have_picture(pattern: str) -> bool:
    """Whether files of this `types` entry can have derivatives: images, PDFs (first page),
    videos (a poster frame)."""
    return pattern.startswith(("image/", "video/")) or any(
        fnmatch.fnmatchcase(t, pattern) for t in ("image/png", "application/pdf", "video/mp4"))


class ProfilesFile(BaseModel):
    """The profiles file: ``[profiles.NAME]`` tables and nothing else ("[profile.avatar]"
    would otherwise leave every profile out, silently)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    profiles: dict[str, Profile] = {}

    @model_validator(mode="after")
    def _name_profiles(self) -> ProfilesFile:
        for name, profile in self.profiles.items():
            profile._name = name
        return self


def load_profiles(path: Path | None) -> Profiles:
    if path is None:
        return Profiles({})
    try:
        data = tomllib.loads(path.read_text())
        return Profiles(ProfilesFile.model_validate(data).profiles)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: {e}") from None
    except ValidationError as e:
        raise ProfileError("\n".join(_describe(path, error) for error in e.errors())) from None


def _describe(path: Path, error: ErrorDetails) -> str:
    """One line per error, naming the file, the profile and the key."""
    loc = [str(part) for part in error["loc"]]
    msg = error["msg"].removeprefix("Value error, ")
    if len(loc) == 1:
        if error["type"] == "extra_forbidden":
            return (f"{path}: unknown table [{loc[0]}]: profiles are defined as"
                    " [profiles.NAME]")
        return f"{path}: [{loc[0]}] must be a table"
    name, key = loc[1], loc[2:]
    if not key:
        return f"{path}: profile {name!r} must be a table"
    if key[-1] == "[key]":  # the name of a derivative
        key, msg = key[:-1], (f"derivative name {key[-2]!r}: must be 1-64 letters, digits, '_'"
                              " or '-', starting with a letter or digit")
    elif error["type"] == "extra_forbidden":
        model = Profile if len(key) == 1 else DerivativeSpec
        msg = f"unknown key (expected one of {', '.join(sorted(model.model_fields))})"
    elif error["type"] == "tuple_type":  # a tuple in Python, a list in the file
        msg = 'must be a list of MIME types such as "image/png" or "image/*"'
    return f"{path}: profile {name!r}, key {'.'.join(key)!r}: {msg}"
