"""The long fuzz run behind ``make fuzz``: at least 100,000 inputs against a live gateway.

The inputs (WebSocket frames, HTTP requests, decoder streams; see ``fuzzing.py``) are drawn
with Hypothesis in worker processes, batch by batch, while the previous batch runs against an
in-process gateway on a loopback port; drawing is the costlier half, so it gets the other
core. Each batch runs its frames on several sockets and its requests on several connections at
once, then checks that the gauges are back at their baseline and that a bystander
conversation, open since the first batch, still completes and continues a turn. The oracle is
the one the fast tests use (``fuzzing.Fuzzer``).

Usage: ``python tests/fuzz/run.py [--inputs N] [--batch N] [--seed N]``. The exit status is 1
when anything failed: a crash, a hang, an undocumented error code, a leaked session or a
bystander failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.fuzzing import (
    draw_many,
    http_inputs,
    live_gateway,
    run_batch,
    stream_inputs,
    ws_groups,
)

#: Each kind's share of the inputs; a frame group holds 3.5 frames on average.
SHARES = {"ws": 0.4, "http": 0.3, "decoder": 0.3}
FRAMES_PER_GROUP = 3.5


def draw_batch(size: int, seed_value: int) -> tuple[list[Any], list[Any], list[Any]]:
    """The inputs of one batch of about ``size`` inputs."""
    groups = draw_many(
        ws_groups, max(1, round(size * SHARES["ws"] / FRAMES_PER_GROUP)), seed_value=seed_value
    )
    requests = draw_many(
        http_inputs(), max(1, round(size * SHARES["http"])), seed_value=seed_value + 1
    )
    streams = draw_many(
        stream_inputs(), max(1, round(size * SHARES["decoder"])), seed_value=seed_value + 2
    )
    return groups, requests, streams


async def fuzz(inputs: int, batch: int, seed_value: int, jobs: int, workers: int) -> int:
    batches = max(1, -(-inputs // batch))
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: list[Future[tuple[list[Any], list[Any], list[Any]]]] = [
            pool.submit(draw_batch, batch, seed_value + 10 * index)
            for index in range(min(batches, jobs + 1))
        ]
        submitted = len(pending)
        async with live_gateway() as fuzzer:
            out = fuzzer.out
            index = 0
            while sum(out.inputs.values()) < inputs:
                if not pending:  # the batches fell short of their size: one more
                    pending.append(pool.submit(draw_batch, batch, seed_value + 10 * submitted))
                    submitted += 1
                groups, requests, streams = await asyncio.wrap_future(pending.pop(0))
                if submitted < batches:
                    pending.append(pool.submit(draw_batch, batch, seed_value + 10 * submitted))
                    submitted += 1
                await run_batch(fuzzer, groups, requests, streams, workers=workers)
                index += 1
                done = sum(out.inputs.values())
                elapsed = time.monotonic() - started
                print(
                    f"[batch {index}] {done}/{inputs} inputs, {done / elapsed:.0f}/s, "
                    f"{elapsed:.0f} s | crashes {out.crashes} hangs {out.hangs} "
                    f"undocumented {sum(out.undocumented.values())} "
                    f"leaks {out.leaked_sessions} bystander {out.bystander_failures}",
                    flush=True,
                )
            for future in pending:
                future.cancel()
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {sum(out.inputs.values())} inputs in {elapsed:.0f} s")
    print(out.summary())
    if out.inputs_failed:
        with tempfile.NamedTemporaryFile(
            "w", prefix="hotloop-fuzz-", suffix=".txt", delete=False, encoding="utf-8"
        ) as report:
            report.write("\n\n".join(out.inputs_failed))
        print(f"the failing inputs in full: {report.name}")
    return 1 if out.failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in all (100,000)")
    parser.add_argument("--batch", type=int, default=2_000, help="inputs per batch (2,000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the first batch")
    parser.add_argument("--jobs", type=int, default=2, help="processes drawing inputs (2)")
    parser.add_argument("--workers", type=int, default=8, help="sockets and connections (8)")
    args = parser.parse_args()
    sys.exit(asyncio.run(fuzz(args.inputs, args.batch, args.seed, args.jobs, args.workers)))


if __name__ == "__main__":
    main()
