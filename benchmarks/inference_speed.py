"""Time symptom-to-organ inference, printed as JSON: a warm query and a cold `inferring` run.

    python benchmarks/inference_speed.py [--scan ../shared/data/ct/patient_a] [--cold-runs 3] [--warm-queries 100]

- warm query: in one process, with the text encoder loaded and the scan's organ features cached, the time of
  ``reasoner.probabilities([symptom], organ_features)`` for each of ``--warm-queries`` different symptoms
  (the shipped corpus' test texts): text encoder, text MLP, W_align and the 7 probabilities.
- cold run: the whole `inferring` command, run in bundle/ (its README's form), in a fresh process on the scan
  with an empty feature cache, wall time including start-up, loading the scan, its organ features, the
  probability map and the picture.
Targets (issue 4): warm query <= 20 ms, cold run <= 30 s, on the 2-core development machine (no GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SYMPTOM = "dark urine and yellowing of the eyes"
WARM_TARGET_MS, COLD_TARGET_S = 20.0, 30.0


def cold_run(scan: Path, tmp: Path) -> float:
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inferring",
        "--config_file",
        "['configs/train.yaml','configs/inference.yaml']",
    ]
    command += ["--image", str(scan / "ct.nii.gz"), "--label", str(scan / "seg_totalseg.nii.gz")]
    command += ["--label_convention", "totalseg_total", "--symptom", SYMPTOM]
    command += ["--output_dir", str(tmp / "out"), "--feature_cache_dir", str(tmp / "empty_cache")]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO / "bundle", capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"inferring failed:\n{result.stderr[-3000:]}")
    return seconds


def warm_queries(scan: Path, count: int) -> list[float]:
    sys.path.insert(0, str(REPO / "bundle"))
    from monai.bundle import ConfigParser

    from text_pipeline.corpus import read_corpus

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / name) for name in ("train.yaml", "inference.yaml")])
    parser["bundle_root"] = str(REPO / "bundle")
    parser["feature_cache_dir"] = None
    reasoner, cache = parser.get_parsed_content("reasoner"), parser.get_parsed_content("feature_cache")
    organs = cache(
        {"image": str(scan / "ct.nii.gz"), "label": str(scan / "seg_totalseg.nii.gz"), "convention": "totalseg_total"}
    )
    reasoner.probabilities([SYMPTOM], organs)  # loads the text encoder
    timings = []
    for query in read_corpus("test")[:count]:
        start = time.perf_counter()
        reasoner.probabilities([query.text], organs)
        timings.append(1000.0 * (time.perf_counter() - start))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=REPO.parent / "shared" / "data" / "ct" / "patient_a")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--warm-queries", type=int, default=100)
    args = parser.parse_args()
    scan = args.scan.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        cold = [cold_run(scan, Path(tmp) / str(run)) for run in range(args.cold_runs)]
    warm = sorted(warm_queries(scan, args.warm_queries))
    report = {
        "scan": str(scan),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "warm_query_ms": {
            "median": round(statistics.median(warm), 2),
            "p95": round(warm[int(0.95 * (len(warm) - 1))], 2),
            "max": round(warm[-1], 2),
            "queries": len(warm),
            "target": WARM_TARGET_MS,
        },
        "cold_inferring_s": {"runs": [round(s, 2) for s in cold], "max": round(max(cold), 2), "target": COLD_TARGET_S},
    }
    report["meets_targets"] = report["warm_query_ms"]["p95"] <= WARM_TARGET_MS and max(cold) <= COLD_TARGET_S
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
