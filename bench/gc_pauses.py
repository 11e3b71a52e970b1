"""The daemon's garbage collector in a drain: its share of the daemon's CPU, its longest
pause, and the drain's rate, with jobwire's settings (jobwire.gc_tuning) and with CPython's
own, alternating.

Each daemon is started with bench/gcprobe on PYTHONPATH: its sitecustomize times every
collection from the end of start-up and, for the "CPython defaults" rounds, turns jobwire's
start-up gc.freeze and gc.set_threshold into no-ops. The latency scenario (AMQP, 1,000
msg/s) shows what the pauses do to p99.

    .venv/bin/python -m bench.gc_pauses --jobs 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import __main__ as suite
from bench.common import run

PROBE_DIR = Path(__file__).resolve().parent / "gcprobe"
SETTINGS = {"CPython defaults": True, "jobwire (gc_tuning)": False}


def _scenarios(jobs: int) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "filled table, defaults": lambda: suite.jobwire_drain_defaults(jobs),
        "AMQP drain, defaults": lambda: suite.jobwire_amqp_defaults(jobs),
        "Kafka drain (tansu)": lambda: suite.jobwire_kafka(jobs),
        "latency, AMQP 1,000 msg/s": lambda: suite.latency(),
    }


async def _probed(defaults: bool, scenario: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run one scenario with the probe in its daemons; what the probe and the scenario saw."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gc.jsonl"
        names = ("PYTHONPATH", "JOBWIRE_GC_PROBE", "JOBWIRE_GC_PROBE_DEFAULTS")
        saved = {k: os.environ.get(k) for k in names}
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROBE_DIR), saved["PYTHONPATH"]) if p
        )
        os.environ["JOBWIRE_GC_PROBE"] = str(out)
        if defaults:
            os.environ["JOBWIRE_GC_PROBE_DEFAULTS"] = "1"
        else:
            os.environ.pop("JOBWIRE_GC_PROBE_DEFAULTS", None)
        try:
            result = await scenario()
        finally:
            for key in names:
                if saved[key] is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = str(saved[key])
        daemons = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
    gc_seconds = sum(d["seconds"] for d in daemons)
    cpu = sum(d["cpu"] for d in daemons)
    return {
        "result": result,
        "gc_share": gc_seconds / cpu if cpu else float("nan"),
        "longest_ms": max((d["longest"] for d in daemons), default=float("nan")) * 1000,
        "collections": [sum(d["counts"][g] for d in daemons) for g in range(3)],
    }


def _figure(result: Any) -> str:
    if isinstance(result, dict):  # latency
        return f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    return f"{result.rate:,.0f} jobs/s"


async def main(jobs: int, rounds: int, only: list[str] | None) -> None:
    """Each scenario with each setting, round after round; then one table."""
    scenarios = {k: v for k, v in _scenarios(jobs).items() if not only or any(o in k for o in only)}
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for name, scenario in scenarios.items():
            for setting, defaults in SETTINGS.items():
                seen.setdefault((name, setting), []).append(await _probed(defaults, scenario))
    print(f"garbage collector in the daemon, {jobs} jobs, {rounds} alternating rounds")
    print(f"{'scenario':<27} {'collector':<20} {'GC/CPU':>7} {'longest':>8}  gen0/1/2  result")
    for (name, setting), runs in seen.items():
        share = statistics.median(r["gc_share"] for r in runs)
        longest = max(r["longest_ms"] for r in runs)
        counts = "/".join(
            str(round(statistics.median(r["collections"][g] for r in runs))) for g in range(3)
        )
        figures = "; ".join(_figure(r["result"]) for r in runs)
        print(f"{name:<27} {setting:<20} {share:>7.1%} {longest:>6.1f}ms  {counts:<9} {figures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="scenarios whose name contains this")
    args = parser.parse_args()
    run(main(args.jobs, args.rounds, args.only))
