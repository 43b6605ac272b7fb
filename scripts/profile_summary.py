"""Where a profiled worker's time goes: py-spy's collapsed stacks (`bench_serve.py --profile`) summed per
thread and per function (inclusive: a function's share of the samples whose stack holds it).

    .venv/bin/python scripts/profile_summary.py profiles/rerank-tansu-1000.txt --top 30
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*)\)$")


def frame_name(frame: str) -> str:
    """`function (path/to/pkg/module.py:123)` -> `function (pkg/module.py)`: line numbers merged."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"].rsplit(":", 1)[0]
    return f"{match['function']} ({'/'.join(Path(file).parts[-2:])})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        for name in dict.fromkeys(frame_name(f) for f in frames[1:]):
            inclusive[name] += n
    print(f"{total} samples")
    for thread, n in threads.most_common():
        print(f"{100 * n / total:6.1f} %  {thread}")
    print()
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:6.1f} %  {name}")


if __name__ == "__main__":
    main()
