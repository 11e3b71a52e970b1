"""Where a py-spy profile's time went: the share of samples each function appears in.

Reads the raw stacks ``--profile FILE`` writes (bench/amqp_drain.py, bench/kafka_drain.py)
and prints, per function, the share of all samples whose stack holds it (inclusive time),
largest first; with ``--own``, the share in which it is the innermost frame (own time: an
idle event loop shows as ``Runner.run``). ``--match`` keeps only functions whose name or
file contains the text.

    .venv/bin/python bench/stacks.py /tmp/amqp.txt --top 40
"""

from __future__ import annotations

import argparse
import collections
import re

# "function (path/to/file.py:123)" -> "function (file.py)": lines of one function count once.
FRAME = re.compile(r"^(?P<function>.*?) \((?:.*/)?(?P<file>[^/:]+)(?::\d+)?\)$")


def shares(path: str, own: bool = False) -> tuple[int, collections.Counter[str]]:
    """Total samples, and per function the samples whose stack holds it (``own``: whose
    innermost frame it is)."""
    total = 0
    holding: collections.Counter[str] = collections.Counter()
    with open(path) as stacks:
        for line in stacks:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            samples = int(count)
            total += samples
            frames = stack.split(";")
            for function in {_function(f) for f in (frames[-1:] if own else frames)}:
                holding[function] += samples
    return total, holding


def _function(frame: str) -> str:
    found = FRAME.match(frame)
    return f"{found['function']} ({found['file']})" if found else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="only functions containing this")
    parser.add_argument("--own", action="store_true", help="own time: innermost frames only")
    args = parser.parse_args()
    total, holding = shares(args.raw, args.own)
    print(f"{total} samples")
    shown = [(f, n) for f, n in holding.most_common() if args.match in f][: args.top]
    for function, samples in shown:
        print(f"{100 * samples / total:5.1f}%  {function}")


if __name__ == "__main__":
    main()
