"""Instructions per chat completion, counted by callgrind: a number machine drift cannot move.

    .venv/bin/python -m bench.instructions [--previous REF] [--requests 100 300]
        [--endpoints 3] [--platform]

Runs `bench.inprocess` (the gateway's ASGI app driven in-process, platform off,
one non-streamed chat completion at a time) under valgrind's callgrind twice, with
two request counts. The difference in instructions divided by the difference in
requests is the gateway's instructions per request: start-up, imports and the dev
Triton set-up cancel out. Instructions are counted, not timed, so the figure
repeats from run to run whatever the VM's neighbours do (the latency benches move
by more than most changes are worth). With --previous REF, the same for git
revision REF. Each run takes about two minutes; Triton itself is not counted.
With --endpoints N, also this tree with the model served by N dev Tritons (the
balancing and health bookkeeping of a fleet, against one endpoint). With --platform,
platform off, key limits and key + project limits (issue 17's CPU ratio, counted); the
log drain and the ORM thread count too, but their batching follows wall time, which
valgrind stretches about 50x.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, checkout, checkout_remove

TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.MULTILINE)


def instructions(root: Path, requests: int, endpoints: int = 1, mode: tuple = ()) -> int:
    """All instructions of one `bench.inprocess --requests N` run from checkout `root`;
    `mode`: more of its options (--platform, --project)."""
    fleet = ["--endpoints", str(endpoints)] if endpoints > 1 else []
    fleet += list(mode)
    out = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    try:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}/callgrind.out",
                sys.executable,
                "-m",
                "bench.inprocess",
                "--requests",
                str(requests),
                *fleet,
            ],
            cwd=root,
            # Model and key rows are reloaded every MODEL_CACHE_SECONDS of wall time;
            # under valgrind a request takes ~50x longer, so at the default 1 s those
            # reloads (a thread hop and a query each) would count per request as they
            # never do at full speed. Counted here: the request path alone.
            # Triton's probes too: they run on wall time, and a probe's answer may take
            # seconds under valgrind.
            env={
                **os.environ,
                "MODEL_CACHE_SECONDS": "3600",
                "API_KEY_CACHE_SECONDS": "3600",
                "TRITON_PROBE_SECONDS": "3600",
                "TRITON_CONNECT_TIMEOUT": "120",
            },
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return int(TOTALS.search((out / "callgrind.out").read_text(errors="replace")).group(1))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def per_request(root: Path, low: int, high: int, endpoints: int = 1, mode: tuple = ()) -> float:
    counts = [instructions(root, n, endpoints, mode) for n in (high, low)]
    return (counts[0] - counts[1]) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--previous", help="git revision to count too")
    parser.add_argument("--requests", type=int, nargs=2, default=(100, 300))
    parser.add_argument("--endpoints", type=int, default=1, help="also with N Tritons")
    parser.add_argument(
        "--platform",
        action="store_true",
        help="platform off, key limits, key + project limits (PostgreSQL and Redis, as "
        "bench.inprocess --platform); with --previous, key + project only",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    low, high = args.requests
    mode = ("--platform", "--project") if args.platform else ()
    if args.platform:
        off = per_request(ROOT, low, high)
        keys = per_request(ROOT, low, high, mode=("--platform",))
        print(f"this tree, platform off: {off / 1e6:.3f} M instructions per chat completion")
        print(f"this tree, key limits: {keys / 1e6:.3f} M ({keys / off:.2f}x platform off)")
    current = per_request(ROOT, low, high, mode=mode)
    if args.platform:
        print(f"this tree, key + project limits: {current / 1e6:.3f} M ({current / off:.2f}x)")
    else:
        print(f"this tree: {current / 1e6:.3f} M instructions per chat completion")
    if args.endpoints > 1:
        fleet = per_request(ROOT, low, high, args.endpoints)
        print(
            f"this tree, {args.endpoints} endpoints: {fleet / 1e6:.3f} M instructions per chat "
            f"completion ({(fleet - current) / 1e3:+.1f} k against one endpoint)"
        )
    if args.previous:
        tree = checkout(args.previous)
        try:
            (tree / "var").mkdir(exist_ok=True)
            previous = per_request(tree, low, high, mode=mode)
        finally:
            checkout_remove(tree)
        print(
            f"{args.previous}: {previous / 1e6:.3f} M instructions per chat completion "
            f"(this tree: {current / previous:.2f}x)"
        )


if __name__ == "__main__":
    main()
