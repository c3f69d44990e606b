"""Time the main job: `python -m monai.bundle run training` on the embedded default, printed as JSON.

    python benchmarks/train_embedded_default.py [--keep-phantoms] [-- extra bundle overrides]

Runs the real command in a subprocess with outputs in a temporary folder (phantoms too, unless
--keep-phantoms reuses bundle/data/phantom), and reports its wall time and the validation it printed.
Target (issue 2): under 600 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-phantoms", action="store_true", help="reuse bundle/data/phantom if present")
    parser.add_argument("overrides", nargs="*", help="extra `--id value` bundle overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "monai.bundle", "run", "training"]
        command += [
            "--config_file",
            "configs/train.yaml",
            "--ckpt_dir",
            f"{tmp}/models",
            "--output_dir",
            f"{tmp}/eval",
        ]
        if not args.keep_phantoms:
            command += ["--phantom_dir", f"{tmp}/phantom"]
        command += args.overrides
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO / "bundle", capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"training failed:\n{result.stderr[-4000:]}")
        metrics = json.loads(Path(tmp, "eval", "validation_metrics.json").read_text())
    report = {
        "benchmark": "train_embedded_default",
        "command": " ".join(command[1:]),
        "wall_s": round(wall, 1),
        "target_s": 600,
        "epochs": metrics["epoch"],
        "val_accuracy": metrics["accuracy"],
        "per_organ_accuracy": {key[4:]: value for key, value in metrics.items() if key.startswith("acc_")},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "arch": platform.machine()},
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
