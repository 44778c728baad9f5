#!/usr/bin/env python3
"""Chunked tus uploads, this checkout against an older revision and the Node tus peer, paired.

    python bench/ab_tus.py --base HEAD~1 [--rounds 8] [--size-mib 256] [--chunk-mib 8]

On this VM one invocation of `uploads.py` can differ from the next by more than a change is
worth (the peer alone: 359 to 643 MB/s in one session). Here both versions of Stowage run at
once, each on its own database, beside the peer, and every round uploads the same file to
each of the three in a rotating order; the ratios are taken per round, so drift hits both
sides of each ratio alike. `--base` is exported with `git archive` and run from a temp dir.
Prints the median MB/s of each and the median per-round ratios; writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_PEER_DIR,
    DEFAULT_PG,
    DEFAULT_REDIS,
    REPO,
    RESULTS,
    empty_dir,
    machine,
    start_stowage,
    start_tus_node,
    terminate_cleanly,
    write_json,
)
from uploads import make_payload, tus_chunked


def export(rev: str, into: Path) -> str:
    """The tree of ``rev`` under ``into``; returns the commit it resolved to."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare with (e.g. HEAD~1)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--chunk-mib", type=float, default=8)
    p.add_argument("--json", type=Path, default=RESULTS / "ab_tus.json")
    args = p.parse_args(argv)
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-ab-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        base_commit = export(args.base, tmp / "base-src")
        sides = {"base": tmp / "base", "this": tmp / "this"}
        for d in sides.values():
            d.mkdir()
        base = start_stowage(stack, sides["base"], DEFAULT_PG, DEFAULT_REDIS, name="base",
                             extra_env={"PYTHONPATH": str(tmp / "base-src")})
        this = start_stowage(stack, sides["this"], DEFAULT_PG, DEFAULT_REDIS, name="this")
        node = start_tus_node(stack, DEFAULT_PEER_DIR, tmp)
        payload = make_payload(tmp / "payload.bin", args.size_mib)
        meta = {"filename": "payload.bin", "promote": "false"}
        cache = "stowage-cache"
        targets = [
            ("base", f"{base.base}/v1/tus/", base.auth_header, meta, sides["base"] / cache),
            ("this", f"{this.base}/v1/tus/", this.auth_header, meta, sides["this"] / cache),
            ("tus-node", f"{node.base}/files", None, None, node.files),
        ]
        mbps: dict[str, list[float]] = {name: [] for name, *_ in targets}
        print(f"{args.size_mib} MiB in {args.chunk_mib:g} MiB PATCHes, base {base_commit},"
              f" {args.rounds} rounds (+1 warm-up)", flush=True)
        for r in range(args.rounds + 1):  # round 0 warms every server up, untimed
            shift = r % len(targets)
            for name, url, headers, metadata, stored in targets[shift:] + targets[:shift]:
                out = tus_chunked(url, payload, args.chunk_mib, headers=headers,
                                  metadata=metadata)
                if r:
                    mbps[name].append(payload.size / out["seconds"] / 1e6)
                empty_dir(stored)
            if r:
                print(f"  round {r}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in mbps.items()),
                      flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(mbps[a], mbps[b], strict=True))

    ratios = {"this/base": ratio("this", "base"), "this/tus-node": ratio("this", "tus-node"),
              "base/tus-node": ratio("base", "tus-node")}
    print("\n| target | median MB/s | min | max |\n|---|---:|---:|---:|")
    for name, values in mbps.items():
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f}"
              f" | {max(values):.0f} |")
    print("\n| per-round ratio | median |\n|---|---:|")
    for name, value in ratios.items():
        print(f"| {name} | {value:.3f}× |")
    write_json(args.json, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "params": {"base": base_commit, "rounds": args.rounds, "size_mib": args.size_mib,
                   "chunk_mib": args.chunk_mib},
        "mb_per_s": mbps, "ratios": ratios,
    })
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
