"""Score symptoms on one CT, every text taken as data: `inferring` without MONAI's config evaluation.

    python scripts/symptom_query.py --image CT --label SEG --label_convention totalseg_total \\
        --symptom "dark urine and yellowing of the eyes" [--symptom ...] [--output_dir eval/inference]

Run in the bundle's folder (or give the script's path from anywhere). Writes what `inferring` writes
(``scores.json``, a probability map and a picture per symptom) with the same network, preprocessing and rule:
the bundle's ``evaluator`` (``scripts.inference.SymptomInference``), built from configs/train.yaml and
configs/inference.yaml. No argument goes through the config parser, so a symptom that starts with ``$``, ``@`` or
``%`` is scored as the text it is: this is the command for text from patients or other programs. Errors end
with one line saying what is wrong; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = ("configs/train.yaml", "configs/inference.yaml")
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the CT: a NIfTI file or a DICOM series folder")
    parser.add_argument("--label", required=True, help="its organ label map, on the CT's voxel grid")
    parser.add_argument("--label_convention", required=True, help="the label map's ids: btcv, totalseg_total, ...")
    parser.add_argument("--symptom", action="append", default=[], help="a symptom, exactly as typed (repeatable)")
    parser.add_argument("--queries_file", help='a JSON-lines file of {"text": ...} queries, or corpus:test')
    parser.add_argument("--output_dir", default=str(BUNDLE / "eval" / "inference"), help="where the results go")
    parser.add_argument("--feature_cache_dir", default=str(BUNDLE / "eval" / "organ_feature_cache"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--query_files",
        choices=("true", "false"),
        help="write each query's probability map and picture (default: true for --symptom, false for --queries_file)",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if bool(args.symptom) == bool(args.queries_file):
        parser.error("give one or more --symptom, or --queries_file, not both")
    if not DEVICE.match(args.device):
        parser.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    return args


def query(args: argparse.Namespace) -> dict:
    """The bundle's inference on ``args``' scan and symptoms; the report `inferring` writes as scores.json."""
    if str(BUNDLE) not in sys.path:
        sys.path.insert(1, str(BUNDLE))
    from monai.bundle import ConfigParser

    from scripts.inference import read_symptoms

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / name) for name in CONFIGS])
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    # only the script's own values enter the config: the device was checked against DEVICE above
    parser.update({"bundle_root": str(BUNDLE), "dataset": [], "device": args.device, "feature_cache_dir": None})
    parser["symptoms"] = []  # this script's own, below: nothing of its command line enters the config
    inference = parser.get_parsed_content("evaluator")
    inference.feature_cache.cache_dir = Path(args.feature_cache_dir)
    inference.query_files = args.query_files == "true" if args.query_files else not args.queries_file
    symptoms = args.symptom or read_symptoms(None, args.queries_file, inference.reasoner.max_symptom_words)
    scan = {"image": args.image, "label": args.label, "convention": args.label_convention}
    return inference.infer(scan, symptoms, args.output_dir)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    try:
        report = query(args)
    except Exception as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"\nscores: {Path(args.output_dir) / 'scores.json'} ({len(report['queries'])} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
