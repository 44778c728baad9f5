"""What fsck found: orphans and broken attachments, counted and exemplified, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

EXAMPLES = 20  # examples of each kind a report names


# --- the report --------------------------------------------------------------------------------

@dataclass
class Orphan:
    storage: str
    key: str
    reason: str
    owner_id: str | None  # the id in the key: an attachment's or a tus upload's
    age_s: float | None
    removed: bool = False


@dataclass
class BrokenAttachment:
    attachment_id: str
    app_id: str
    state: str
    missing: list[str]  # "store:{key}"
    marked_failed: bool = False


@dataclass
class FsckReport:
    repair: bool
    grace_s: float
    started_at: str = ""
    duration_s: float = 0.0
    scanned: dict[str, int] = field(default_factory=dict)  # objects listed, per storage
    orphans: int = 0
    orphans_removed: int = 0
    recent: int = 0  # unowned but younger than the grace period: left alone
    unrecognized: int = 0  # keys Stowage never makes: reported, never removed
    broken: int = 0
    broken_repaired: int = 0
    attachments_checked: int = 0  # live attachments whose files were looked for
    skipped_busy: int = 0  # repairs skipped because a worker job held the attachment
    # why the repair was refused (too much to change without --force); nothing was changed
    refused: str | None = None
    # repairs left undone because they would have gone past the limits (without --force)
    held_back: int = 0
    # temp files and unfinished multipart uploads of writers that died (older than the grace)
    leftovers: int = 0
    leftovers_removed: int = 0
    leftover_bytes: int = 0
    leftover_examples: list[str] = field(default_factory=list)
    examples_limit: int = EXAMPLES
    orphan_examples: list[Orphan] = field(default_factory=list)
    broken_examples: list[BrokenAttachment] = field(default_factory=list)
    unrecognized_examples: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return self.orphans + self.broken + self.unrecognized + self.leftovers

    @property
    def clean(self) -> bool:
        return self.problems == 0

    @property
    def unresolved(self) -> int:
        return (self.orphans - self.orphans_removed) + (self.broken - self.broken_repaired) \
            + self.unrecognized + (self.leftovers - self.leftovers_removed)

    @property
    def objects_scanned(self) -> int:
        return sum(self.scanned.values())

    @property
    def exit_code(self) -> int:
        """0 when nothing is wrong or everything found was repaired, else 1."""
        return 0 if self.unresolved == 0 and self.refused is None else 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(clean=self.clean, unresolved=self.unresolved, exit_code=self.exit_code,
                   objects_scanned=self.objects_scanned)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        scanned = ", ".join(f"{name} {n}" for name, n in self.scanned.items()) or "none"
        lines = [f"objects scanned: {scanned}, in {self.duration_s:.1f}s"
                 f" (grace {self.grace_s:g}s{', repair' if self.repair else ''})"]
        lines.append(f"orphans: {self.orphans}"
                     + (f" (removed {self.orphans_removed})" if self.repair else ""))
        for o in self.orphan_examples:
            age = "age ?" if o.age_s is None else f"age {human_seconds(o.age_s)}"
            done = "  removed" if o.removed else ""
            lines.append(f"  {o.storage:<5}  {o.key}  {o.reason}  {age}{done}")
        lines.append(f"broken attachments: {self.broken}"
                     + (f" (marked failed {self.broken_repaired})" if self.repair else ""))
        for b in self.broken_examples:
            done = "  -> failed" if b.marked_failed else ""
            lines.append(f"  {b.attachment_id}  {b.state}  missing {', '.join(b.missing)}"
                         f"{done}")
        if self.leftovers:
            lines.append(f"leftovers of interrupted writes: {self.leftovers}"
                         f" ({self.leftover_bytes} bytes"
                         + (f", removed {self.leftovers_removed})" if self.repair else ")"))
            lines += [f"  {x}" for x in self.leftover_examples]
        if self.unrecognized:
            lines.append(f"unrecognized keys (never removed): {self.unrecognized}")
            lines += [f"  {k}" for k in self.unrecognized_examples]
        if self.recent:
            lines.append(f"recent unowned objects (younger than the grace period, left alone):"
                         f" {self.recent}")
        if self.skipped_busy:
            lines.append(f"not repaired, a worker job held the attachment: {self.skipped_busy}")
        if self.held_back:
            lines.append(f"not repaired, past the limit of a repair without --force:"
                         f" {self.held_back}")
        if self.refused is not None:
            lines.append(f"REFUSED TO REPAIR: {self.refused}")
            lines.append(f"problems found: {self.unresolved}, nothing changed")
        elif self.clean:
            lines.append("clean")
        elif self.unresolved == 0:
            lines.append("problems found, all repaired")
        else:
            lines.append(f"problems found: {self.unresolved} unresolved"
                         + ("" if self.repair else " (run with --repair to fix)"))
        return "\n".join(lines)


def human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def render(report: FsckReport, *, as_json: bool) -> str:
    return report.to_json() if as_json else report.to_text()
