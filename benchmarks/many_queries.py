"""Memory and time of `inferring` with a large queries file, printed as JSON.

    python benchmarks/many_queries.py [--queries 1 50000] [--image CT --label SEG --label_convention CONVENTION]

For each count, a queries file of that many different symptom-like texts (words drawn with a fixed seed) is
written to a temporary folder and scored by the whole `inferring` command in a fresh process, in bundle/ (its
README's form), on the example phantom unless a scan is given, with the scan's organ features cached beforehand
(so the runs differ only in their queries). Reported per count: wall time, the process's peak resident memory, the
size of scores.json, and whether the progress bar was shown.
Target (issue 11): the peak memory of 50,000 queries stays within 200 MB of one query's (bounded memory, not
growing with the number of queries beyond the scores themselves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "pain nausea vomiting jaundice dark urine fever chills back flank upper right left abdominal bloating "
    "heartburn fatigue itching weight loss pale stools blood after meals since weeks sharp dull"
).split()
MEMORY_TARGET_MB = 200.0


def write_queries(path: Path, count: int) -> Path:
    chooser = random.Random(0)
    with path.open("w", encoding="utf-8") as file:
        for _ in range(count):
            file.write(json.dumps({"text": " ".join(chooser.choices(WORDS, k=chooser.randint(2, 12)))}) + "\n")
    return path


def inferring(arguments: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `inferring`; its result, wall seconds and peak resident memory in MB (a fresh child each call)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring"]
    command += ["--config_file", "['configs/train.yaml','configs/inference.yaml']", *arguments]
    code = (
        "import resource, subprocess, sys, json\n"
        f"result = subprocess.run({command!r}, cwd={str(REPO / 'bundle')!r}, capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'returncode': result.returncode, 'stdout': result.stdout, 'stderr': result.stderr, "
        "'peak_mb': peak}))\n"
    )
    start = time.perf_counter()
    # a wrapper process per run, so that each peak is that run's alone (ru_maxrss of children is a maximum)
    wrapper = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    measured = json.loads(wrapper.stdout)
    result = subprocess.CompletedProcess(command, measured["returncode"], measured["stdout"], measured["stderr"])
    if result.returncode != 0:
        raise SystemExit(f"inferring failed:\n{result.stderr[-3000:]}")
    return result, seconds, measured["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 50_000])
    parser.add_argument("--image")
    parser.add_argument("--label")
    parser.add_argument("--label_convention")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scan = ["--dataset_dir", str(tmp / "example")]
        if args.image:
            scan = ["--image", args.image, "--label", args.label, "--label_convention", args.label_convention]
        common = [*scan, "--feature_cache_dir", str(tmp / "cache")]
        inferring([*common, "--symptom", "jaundice", "--output_dir", str(tmp / "warm-up")])  # fills the cache
        for count in args.queries:
            queries = write_queries(tmp / f"queries_{count}.jsonl", count)
            out = tmp / f"out_{count}"
            result, seconds, peak = inferring([*common, "--queries_file", str(queries), "--output_dir", str(out)])
            scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
            if len(scores["queries"]) != count:
                raise SystemExit(f"scores.json holds {len(scores['queries'])} queries, not {count}")
            runs.append(
                {
                    "queries": count,
                    "wall_s": round(seconds, 1),
                    "peak_memory_mb": round(peak, 1),
                    "scores_json_mb": round((out / "scores.json").stat().st_size / 2**20, 1),
                    "progress_bar_shown": "scoring symptoms: 100%" in result.stderr,
                }
            )
    growth = runs[-1]["peak_memory_mb"] - runs[0]["peak_memory_mb"]
    report = {
        "runs": runs,
        "peak_memory_growth_mb": round(growth, 1),
        "memory_target_mb": MEMORY_TARGET_MB,
        "meets_target": growth <= MEMORY_TARGET_MB,
        "machine": {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0))},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
