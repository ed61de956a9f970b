"""``python -m benchmarks``: the floor, the server runs and the capacity, side by side.

Everything runs on this machine in one go: for each repeat the floor, then the workflow with
per-job and with batched completions (each on a fresh server and database); then the capacity
measurement. Prints the target checks and the tables; ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import default_job_output_root
from benchmarks.suite import Settings, run_suite, to_json
from torc_stress.errors import StressError


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    """Parses the command line into settings and the JSON output path."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--jobs-per-stage", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--max-parallel-jobs", type=int, default=os.cpu_count() or 1,
                        help="jobs at once per worker (default: CPUs, as the worker); "
                             "the floor uses workers x this many threads")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (median)")
    parser.add_argument("--capacity-jobs", type=int, default=10000)
    parser.add_argument("--capacity-threads", type=int, default=8)
    parser.add_argument("--claim-limit", type=int, default=10,
                        help="jobs per claim in the per-job capacity measurement")
    parser.add_argument("--batched-claim-limit", type=int, default=100,
                        help="jobs per claim in the batched capacity measurement")
    parser.add_argument("--job-output-dir", type=Path, default=None,
                        help="where the floor's and the workers' job stdout/stderr files go "
                             "(default: /dev/shm when writable, else the system temp dir; the "
                             "server's database stays in the system temp dir)")
    parser.add_argument("--no-batched", action="store_true", help="skip batched completions")
    parser.add_argument("--no-capacity", action="store_true", help="skip the capacity runs")
    parser.add_argument("--run-timeout", type=float, default=None,
                        help="seconds any single run may take before it is aborted "
                             "(default 120 s + 0.1 s per job)")
    parser.add_argument("--keep", action="store_true", help="keep servers' and workers' files")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in ("stages", "jobs_per_stage", "workers", "max_parallel_jobs", "repeat",
                 "capacity_jobs", "capacity_threads", "claim_limit", "batched_claim_limit"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    settings = Settings(
        stages=args.stages, jobs_per_stage=args.jobs_per_stage, workers=args.workers,
        max_parallel_jobs=args.max_parallel_jobs, repeat=args.repeat,
        capacity_jobs=args.capacity_jobs, capacity_threads=args.capacity_threads,
        claim_limit=args.claim_limit, batched_claim_limit=args.batched_claim_limit,
        batched=not args.no_batched,
        capacity=not args.no_capacity, run_timeout=args.run_timeout, keep=args.keep,
        job_root=args.job_output_dir or default_job_output_root(),
    )
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    return settings, args.json


def _finite(value: Any) -> Any:
    """Replaces NaN by None, recursively, so the JSON is valid."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _interrupt(signum: int, frame: object) -> None:
    """Turns SIGTERM into KeyboardInterrupt so every started process is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code (0 even if targets are missed)."""
    settings, json_path = parse_args(argv)
    from benchmarks.render import render

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_suite(settings)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    except StressError as exc:
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    if json_path is not None:
        json_path.write_text(json.dumps(_finite(to_json(results)), indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
