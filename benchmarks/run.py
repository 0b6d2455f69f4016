"""Side-by-side performance measurements: `python -m benchmarks.run [--quick] [--only NAME ...]
[--json PATH [--dirty-because REASON]]`.

Each benchmark times tuner against a baseline in the same run, alternating which of the two runs
first from one repeat to the next (A B, B A, ...) so that both see the same machine, and
repeating (fewer repeats in quick mode). Each reports `{"name", "ratio", "spread", "target",
"detail", "spans", "samples"}`: the ratio is the median repeat's, `spread` the lowest and highest
ratio over the repeats, `spans` says what each side's timed span includes, `samples` holds every
repeat's raw figures. `--json` writes them with the machine, the git commit and the date, and
only from a tree without uncommitted changes to tracked files, unless `--dirty-because` says why
(recorded in the file). Timings are never asserted in tests; these ratios are the measure. Run it
from the repository root on an otherwise idle machine. The suites, one module each:
trainable_vs_bare, overhead (tiny, small, vs_optuna), startup, tracking_overhead,
search_efficiency, recipe_knobs, scale, data_parallel, gpu; what they share is in benchmarks.common.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    data_parallel,
    gpu,
    overhead,
    recipe_knobs,
    scale,
    search_efficiency,
    startup,
    tracking_overhead,
    trainable_vs_bare,
)
from benchmarks.common import (
    ROOT,
    Benchmark,
    dirty_refusal,
    git_state,
    machine,
    machine_line,
    spread_text,
)

#: the suites, in the order a full run runs them
SUITES = (
    trainable_vs_bare,
    overhead,
    startup,
    tracking_overhead,
    search_efficiency,
    recipe_knobs,
    scale,
    data_parallel,
    gpu,
)
BENCHMARKS: dict[str, Benchmark] = {
    name: fn for suite in SUITES for name, fn in suite.BENCHMARKS.items()
}
ABOUT = (
    "ratio: tuner over its baseline in the median repeat (see each benchmark's target for the "
    "better direction); spread: the lowest and highest ratio over the repeats (null for a "
    "single measurement); spans: what each side's timed span includes; samples: every repeat's "
    "raw figures, in the order they ran, with the order of the two sides; load_avg: the "
    "machine's 1, 5 and 15-minute load averages as the benchmark began"
)


def ratio_text(result: dict[str, Any]) -> str:
    if result["ratio"] is None:
        return "-"
    bound = ">=" if result.get("ratio_is") == "lower bound" else ""
    return f"{bound}{result['ratio']:.2f}"


def result_line(result: dict[str, Any]) -> str:
    """The benchmark's printed line: name, median ratio, spread, target, detail, seconds."""
    spread = spread_text(result.get("spread")) or "-"
    return (
        f"{result['name']:<22} {ratio_text(result):>7}  spread {spread:<10} target "
        f"{result['target']:<8} {result['detail']}  [{result['seconds']:.0f} s]"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller studies")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run just these")
    parser.add_argument(
        "--dirty-because",
        metavar="REASON",
        help="write --json from a tree with uncommitted changes; the reason is recorded",
    )
    args = parser.parse_args(argv)
    if args.json and (refusal := dirty_refusal(ROOT, args.dirty_because)):
        parser.exit(2, f"{refusal}\n")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    names = args.only or list(BENCHMARKS)
    about = machine()
    report: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(ROOT, args.dirty_because),
        "machine": about,
        "about": ABOUT,
        "benchmarks": [],
    }
    print(f"{report['mode']} mode on {machine_line(about)}", flush=True)
    started_all = time.perf_counter()
    for name in names:
        load = [round(x, 2) for x in os.getloadavg()]
        started = time.perf_counter()
        result = BENCHMARKS[name](args.quick)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["load_avg"] = load
        report["benchmarks"].append(result)
        report["wall_s"] = round(time.perf_counter() - started_all, 1)
        print(result_line(result), flush=True)
        if args.json:  # after each benchmark: a long run that dies keeps what it measured
            args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
