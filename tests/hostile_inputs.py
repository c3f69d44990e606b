"""Careless and hostile inputs, each with what it must get: the catalogue behind the README's table (issue 11).

A case is a command (``inferring``, ``evaluating``, ``training``, ``symptom_query.py``, ``text_pipeline``), the
arguments a user would type, and its outcome: ``clear error`` (the command fails and says what is wrong, no
traceback), ``handled`` (it succeeds, and the case's check of the result passes) or ``limit`` (a failure outside
the bundle's reach, pinned down so that a change is noticed). ``tests/test_hostile_inputs.py`` runs every case;
``python tests/hostile_inputs.py`` prints the README's table and its totals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from conftest import BUNDLE, REPO, write_queries

CLEAR_ERROR, HANDLED, LIMIT = "clear error", "handled", "limit"
INFERENCE = "['configs/train.yaml','configs/inference.yaml']"
EVALUATION = "['configs/train.yaml','configs/evaluate.yaml']"
MARKER = "ran.txt"  # what the code in a hostile symptom would write


@dataclass(frozen=True)
class Case:
    """One input and what it must get.

    Args:
        entry: the command (``inferring``, ``evaluating``, ``training``, ``symptom_query.py``, ``text_pipeline``).
        given: the input, as the table says it.
        outcome: CLEAR_ERROR, HANDLED or LIMIT.
        gets: what the user sees, as the table says it.
        arguments: the command's arguments, from the case's folder and the prepared scans.
        expect: CLEAR_ERROR and LIMIT: a regular expression the end of stderr matches; HANDLED: a check of the
            finished run (``check(result, case_dir)``).
        before: prepares the case's folder; may return a function called after the run (to stop a process).
        needs_shared: the case reads ../shared/data/ct.
    """

    entry: str
    given: str
    outcome: str
    gets: str
    arguments: Callable[[Path, dict], list[str]]
    expect: str | Callable[[subprocess.CompletedProcess, Path], None]
    before: Callable[[Path, dict], Callable[[], None] | None] | None = None
    needs_shared: bool = False
    id: str = field(default="", compare=False)


def scan_arguments(scan: dict) -> list[str]:
    return ["--image", scan["image"], "--label", scan["label"], "--label_convention", scan["convention"]]


def run_folders(case_dir: Path, out: str = "out") -> list[str]:
    """Every folder an inferring run writes, inside the case's folder."""
    folders = {"output_dir": out, "dataset_dir": "example", "feature_cache_dir": "cache"}
    return [part for key, name in folders.items() for part in (f"--{key}", str(case_dir / name))]


Arguments = Callable[[Path, dict], list[str]]


def plain(*given: str) -> Arguments:
    """``given`` on the default example scan, every folder in the case's."""
    return lambda case_dir, scans: [*given, *run_folders(case_dir)]


def on_scan(name: str, *given: str, symptom: str | None = "jaundice", out: str = "out") -> Arguments:
    """``given`` on one of the prepared scans, with a symptom unless told otherwise, its output in ``out``."""
    symptom_given = ["--symptom", symptom] if symptom is not None else []
    return lambda case_dir, scans: [*scan_arguments(scans[name]), *symptom_given, *given, *run_folders(case_dir, out)]


def with_queries(*given: str) -> Arguments:
    return on_scan("phantom", "--queries_file", "queries.jsonl", *given, symptom=None)


def in_case(arguments: Arguments) -> Arguments:
    """``arguments`` with each name of a file written by ``before`` made a path in the case's folder."""

    def absolute(case_dir: Path, scans: dict) -> list[str]:
        return [str(case_dir / part) if (case_dir / part).exists() else part for part in arguments(case_dir, scans)]

    return absolute


def run_settings(case_dir: Path) -> list[str]:
    """Every folder a training or evaluation run writes, inside the case's folder (``--ckpt_dir`` first)."""
    folders = {"ckpt_dir": "models", "output_dir": "eval", "phantom_dir": "phantoms", "text_embedding_cache": "emb"}
    return [part for key, name in folders.items() for part in (f"--{key}", str(case_dir / name))]


def settings(*given: str) -> Arguments:
    return lambda case_dir, scans: [*given, *run_settings(case_dir)]


def code_writing(case_dir: Path) -> str:
    return f'$__import__("pathlib").Path("{case_dir / MARKER}").write_text("ran") and "pain"'


def with_code(*given: str) -> Arguments:
    """``given`` with ``{code}`` replaced by a symptom whose Python, if run, writes the case's marker."""
    return lambda case_dir, scans: [part.replace("{code}", code_writing(case_dir)) for part in given]


def symptom_query(*texts: str) -> Arguments:
    symptoms = [part for text in texts for part in ("--symptom", text)]

    def arguments(case_dir: Path, scans: dict) -> list[str]:
        folders = ["--output_dir", str(case_dir / "out"), "--feature_cache_dir", str(case_dir / "cache")]
        return [*scan_arguments(scans["phantom"]), *with_code(*symptoms)(case_dir, scans), *folders]

    return arguments


Check = Callable[[subprocess.CompletedProcess, Path], None]


def scored_as_typed(*texts: str, count: int | None = None) -> Check:
    """The run scored exactly ``texts`` (``{code}``: the case's code-writing symptom), and no code ran."""

    def check(result: subprocess.CompletedProcess, case_dir: Path) -> None:
        queries = json.loads((case_dir / "out" / "scores.json").read_text(encoding="utf-8"))["queries"]
        expected = [text.replace("{code}", code_writing(case_dir)) for text in texts]
        assert [query["text"] for query in queries][: len(expected)] == expected
        assert len(queries) == (count or len(expected))
        assert all(len(query["ranking"]) == 7 for query in queries)  # the phantom holds all 7 organs
        assert not (case_dir / MARKER).exists()

    return check


Before = Callable[[Path, dict], Callable[[], None] | None]


def queries_file(lines: bytes) -> Before:
    return lambda case_dir, scans: (case_dir / "queries.jsonl").write_bytes(lines) and None


def a_file_named(name: str) -> Before:
    return lambda case_dir, scans: (case_dir / name).write_text("not a folder") and None


def held_by_another_run(folder: str) -> Before:
    """Another process holds ``case_dir/folder`` the way a bundle run does, until the case's run has ended."""

    def before(case_dir: Path, scans: dict) -> Callable[[], None]:
        code = f"from scripts.output_folder import hold_folders\nhold_folders(output_dir={str(case_dir / folder)!r})\n"
        code += "print('held', flush=True)\nimport time\ntime.sleep(600)\n"
        holder = subprocess.Popen([sys.executable, "-c", code], cwd=BUNDLE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        return lambda: (holder.kill(), holder.wait())

    return before


def earlier_run_left(case_dir: Path, scans: dict) -> None:
    out = case_dir / "out"
    out.mkdir()
    for name in ("query_000.png", "query_001.png", "query_001_probability_map.nii.gz", "scores.json", "notes.txt"):
        (out / name).write_text("an earlier run's")


def only_this_runs_files(result: subprocess.CompletedProcess, case_dir: Path) -> None:
    out = case_dir / "out"
    assert sorted(os.listdir(out)) == ["notes.txt", "query_000.png", "query_000_probability_map.nii.gz", "scores.json"]
    assert (out / "notes.txt").read_text() == "an earlier run's"  # the user's own file stays
    scored_as_typed("jaundice")(result, case_dir)


def corrupt_cache_entry(case_dir: Path, scans: dict) -> None:
    """The phantom's feature-cache entry, cut short as by a full disk."""
    assert bundle_command("inferring", on_scan("phantom")(case_dir, scans)).returncode == 0
    (entry,) = (case_dir / "cache").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])


def recomputed(result: subprocess.CompletedProcess, case_dir: Path) -> None:
    (entry,) = (case_dir / "cache").glob("*.pt")
    assert f"organ feature cache entry {entry} is unreadable" in result.stdout  # MONAI's logging goes to stdout
    assert entry.stat().st_size > 100  # rewritten whole
    scored_as_typed("jaundice")(result, case_dir)


MANY = [f"pain number {i} in the upper abdomen" for i in range(300)]


def many_queries(case_dir: Path, scans: dict) -> None:
    write_queries(case_dir / "queries.jsonl", MANY)


def progress_and_every_score(result: subprocess.CompletedProcess, case_dir: Path) -> None:
    assert "scoring symptoms: 100%" in result.stderr and f"{len(MANY)}/{len(MANY)}" in result.stderr
    assert f"... and {len(MANY) - 10} more queries" in result.stdout
    scored_as_typed(*MANY)(result, case_dir)


WORDS_10000 = " ".join(["pain"] * 10_000)
NOT_A_SYMPTOM = "refused: not a symptom (was: the demo symptom scored)"

CASES = [
    # text is data, never code
    Case("inferring", "`--symptom '$__import__(...)...'` (Python)", CLEAR_ERROR,
         "refused before anything runs, naming the command that scores any text",
         with_code("--symptom", "{code}"), r"error: --symptom starts with '\$'.*symptom_query\.py"),
    Case("inferring", "`--symptom '@label'` (a config reference)", CLEAR_ERROR,
         "refused: MONAI would read another config entry", plain("--symptom", "@label"),
         "error: --symptom starts with '@'"),
    Case("inferring", "`--symptom '%bundle_root'` (a macro)", CLEAR_ERROR, "refused: MONAI would expand a macro",
         plain("--symptom", "%bundle_root"), "error: --symptom starts with '%'"),
    Case("inferring", "`--output_dir '$...'` (Python in a path)", CLEAR_ERROR, "refused before anything runs",
         with_code("--output_dir", "{code}"), r"error: --output_dir starts with '\$'"),
    Case("symptom_query.py", "`--symptom` `'$__import__(...)'`, `'@label'`, `'%bundle_root'`, `'None'`", HANDLED,
         "each scored as the text it is; nothing runs", symptom_query("{code}", "@label", "%bundle_root", "None"),
         scored_as_typed("{code}", "@label", "%bundle_root", "None")),
    Case("inferring", "`--symptom '#2 pain'` (starts with `#`)", HANDLED, "scored as typed",
         on_scan("phantom", symptom="#2 pain"), scored_as_typed("#2 pain")),
    Case("inferring", "`--symptom 'pain, nausea, vomiting'`", HANDLED,
         "scored as typed (MONAI's command line alone makes it a tuple)",
         on_scan("phantom", symptom="pain, nausea, vomiting"), scored_as_typed("pain, nausea, vomiting")),
    Case("inferring", "`--symptom 'pain # after meals'`", HANDLED,
         "scored as typed (MONAI's command line alone drops the text after `#`)",
         on_scan("phantom", symptom="pain # after meals"), scored_as_typed("pain # after meals")),
    Case("inferring", "`--symptom True` (or a number)", HANDLED, "scored as the text typed",
         on_scan("phantom", symptom="True"), scored_as_typed("True")),
    Case("inferring", "`--symptom None`", CLEAR_ERROR, NOT_A_SYMPTOM, plain("--symptom", "None"),
         "error: --symptom 'None' is not a symptom"),
    Case("inferring", "`--symptom null`", CLEAR_ERROR, NOT_A_SYMPTOM, plain("--symptom", "null"),
         "error: --symptom 'null' is not a symptom"),
    Case("inferring", "`--symptom '   '` (only spaces)", CLEAR_ERROR, "refused: empty", plain("--symptom", "   "),
         "error: symptom is empty or only whitespace"),
    Case("inferring", "`--symptom` holding bytes that are not UTF-8", CLEAR_ERROR, "refused: not valid UTF-8",
         plain("--symptom", "pain \udcff in the belly"), "error: symptom is not valid UTF-8 text"),
    Case("inferring", "a 300-word `--symptom`", CLEAR_ERROR, "refused: at most 200 words (what the encoder reads)",
         plain("--symptom", " ".join(["pain"] * 300)), "error: symptom has 300 words; at most 200"),
    Case("inferring", "a 10,000-word `--symptom`", LIMIT,
         "MemoryError in MONAI's command line (fire parses the value as Python) before the bundle runs: "
         "use `symptom_query.py` or a queries file", plain("--symptom", WORDS_10000), "MemoryError"),
    Case("symptom_query.py", "a 10,000-word `--symptom`", CLEAR_ERROR, "refused: at most 200 words",
         symptom_query(WORDS_10000), "error: symptom 1 has 10000 words; at most 200"),
    Case("inferring", "`--image 'scan#1.nii.gz'` (a `#` in a path)", CLEAR_ERROR,
         "refused, naming how to quote it (MONAI's command line alone reads `scan`)",
         plain("--image", "scan#1.nii.gz", "--label", "seg.nii.gz", "--label_convention", "btcv"),
         r"""error: --image 'scan#1.nii.gz' would reach the bundle as 'scan'.*--image '"scan#1.nii.gz"'"""),
    # scans and label maps
    Case("inferring", "`--image` a file that does not exist", CLEAR_ERROR, "refused, naming the file",
         on_scan("missing_ct"), r"error: image \S*nowhere\.nii\.gz does not exist"),
    Case("inferring", "`--image` without `--label`", CLEAR_ERROR,
         "refused: give them together (was: paired with the example's label map)",
         lambda case_dir, scans: ["--image", scans["phantom"]["image"], *run_folders(case_dir)],
         "error: --image given without --label, --label_convention"),
    Case("inferring", "an unknown `--label_convention`", CLEAR_ERROR, "refused, listing the known ones",
         on_scan("unknown_convention"), "error: unknown label_convention 'nnunet'; known:"),
    Case("inferring", "label map with non-integer values (0.5 added)", CLEAR_ERROR,
         "refused, naming the file (was: rounded to other organs)", on_scan("half_ids"),
         r"error: .*half_ids\.nii\.gz.*not whole numbers"),
    Case("inferring", "label map with ids outside its convention (99 in BTCV)", CLEAR_ERROR,
         "refused, naming the file and the ids", on_scan("id_99"),
         r"error: .*id_99\.nii\.gz holds ids 99, outside the btcv convention's 0\.\.13"),
    Case("inferring", "label map whose organs are all smaller than `min_voxels`", CLEAR_ERROR,
         "refused: no organ can be scored, each organ's voxels listed", on_scan("tiny_organs"),
         r"error: .*tiny_organs_ct\.nii\.gz: no organ has the 4 voxels needed on the network's grid"),
    Case("inferring", "label map with none of the 7 organs", CLEAR_ERROR, "refused, naming the file",
         on_scan("no_organs"), r"error: .*no_organs\.nii\.gz contains none of the organs"),
    Case("inferring", "image and label map swapped", CLEAR_ERROR, "refused: the \"CT\" is not in Hounsfield units",
         on_scan("swapped"), r"error: .*swapped_ct\.nii\.gz does not look like a CT in Hounsfield units"),
    Case("inferring", "label map on another grid than its CT", CLEAR_ERROR, "refused, naming both files",
         on_scan("shifted"), r"error: .*shifted\.nii\.gz is not aligned with its CT \S*shifted_ct\.nii\.gz"),
    Case("inferring", "CT with NaN and inf voxels inside organs", CLEAR_ERROR,
         "refused, naming the file (was: 7 null probabilities, exit 0)", on_scan("nan_ct"),
         r"error: .*nan_ct_ct\.nii\.gz holds 2 non-finite voxels \(1 NaN, 1 \+inf\)"),
    Case("inferring", "an 8-bit image as the CT", CLEAR_ERROR, "refused: not a CT in Hounsfield units",
         on_scan("eight_bit"), r"error: .*eight_bit.*Hounsfield"),
    Case("inferring", "a NIfTI file cut short", CLEAR_ERROR, "refused, naming the file", on_scan("truncated"),
         r"error: cannot preprocess scan \S*truncated_ct\.nii\.gz.*ended before the end-of-stream"),
    Case("inferring", "a DICOM folder holding two series", CLEAR_ERROR,
         "refused, listing each series (UID, description, slices)", on_scan("two_series"),
         r"error: .*is a DICOM folder holding 2 series", needs_shared=True),
    Case("inferring", "an MR scan (`../shared/data/ct/mr_sample`)", CLEAR_ERROR,
         "refused: not a CT in Hounsfield units", on_scan("mr"), r"error: .*Hounsfield", needs_shared=True),
    # queries files
    Case("inferring", "a queries file saved with a UTF-8 byte order mark", HANDLED, "read; each query scored",
         in_case(with_queries()), scored_as_typed("jaundice", "dark urine"),
         before=queries_file(b'\xef\xbb\xbf{"text": "jaundice"}\n{"text": "dark urine"}\n')),
    Case("inferring", "a queries file with a malformed line", CLEAR_ERROR, "refused, naming the file and line",
         in_case(with_queries()), r"error: \S*queries\.jsonl:2: not valid JSON",
         before=queries_file(b'{"text": "jaundice"}\n{"text": "dark urine",\n')),
    Case("inferring", "a queries file that does not exist", CLEAR_ERROR, "refused, naming the file",
         with_queries(), r"error: queries\.jsonl does not exist"),
    Case("inferring", "`--symptom` and `--queries_file` together", CLEAR_ERROR, "refused: one or the other",
         in_case(with_queries("--symptom", "jaundice")), "error: set exactly one of symptom",
         before=queries_file(b'{"text": "jaundice"}\n')),
    Case("inferring", "a queries file of 300 lines (50,000 in `benchmarks/many_queries.py`)", HANDLED,
         "scored in batches with a progress bar, 10 rankings printed; 50,000 queries: 101 MB more memory than one",
         in_case(with_queries()), progress_and_every_score, before=many_queries),
    Case("evaluating", "a queries file with a malformed line", CLEAR_ERROR,
         "refused before the image half writes anything (was: image metrics written first)",
         in_case(settings("--queries_file", "queries.jsonl")), r"error: \S*queries\.jsonl:2: not valid JSON",
         before=queries_file(b'{"text": "jaundice", "organs": ["liver"]}\n{"text"\n')),
    # models
    Case("inferring", "`--model_path` a file that is not weights", CLEAR_ERROR, "refused, naming the file",
         in_case(on_scan("phantom", "--model_path", "model.pt")),
         r"error: model weights \S*model\.pt cannot be read as a PyTorch state dict",
         before=lambda case_dir, scans: (case_dir / "model.pt").write_text("not weights") and None),
    Case("evaluating", "`--model_path` that does not exist", CLEAR_ERROR, "refused before anything is written",
         lambda case_dir, scans: ["--model_path", str(case_dir / "none.pt"), *run_settings(case_dir)],
         r"error: model weights \S*none\.pt do not exist"),
    Case("evaluating", "`--text_artifacts` a folder without the text model", CLEAR_ERROR,
         "refused before anything is written (was: phantoms written and the image half run first)",
         lambda case_dir, scans: ["--text_artifacts", "/nonexistent/text", *run_settings(case_dir)[2:]],
         r"error: text model /nonexistent/text/text_mlp_calibrated\.pt does not exist"),
    # outputs
    Case("inferring", "`--output_dir` that cannot be written (under a file)", CLEAR_ERROR,
         "refused before the run's work", on_scan("phantom", out="a_file/out"),
         r"error: output_dir \S*a_file/out cannot be written", before=a_file_named("a_file")),
    Case("inferring", "`--output_dir` another run is writing", CLEAR_ERROR, "refused, naming the other run's process",
         on_scan("phantom"), r"error: output_dir \S*out is in use by another run \(process \d+\)",
         before=held_by_another_run("out")),
    Case("inferring", "`--output_dir` reused from a run with more queries", HANDLED,
         "only this run's files there (an earlier run's `query_001.*` removed; the user's own files kept)",
         on_scan("phantom"), only_this_runs_files, before=earlier_run_left),
    Case("inferring", "a corrupt feature-cache entry", HANDLED, "named in a warning, computed anew, rewritten",
         on_scan("phantom"), recomputed, before=corrupt_cache_entry),
    Case("training", "`--num_epochs -1`", CLEAR_ERROR,
         "refused by its config id before any file is written (was: Ignite's `max_epochs`, TensorBoard files left)",
         settings("--num_epochs", "-1"), "error: num_epochs must be a whole number of at least 1, got -1"),
    Case("training", "`--batch_size 0`", CLEAR_ERROR, "refused by its config id before any file is written",
         settings("--batch_size", "0"), "error: batch_size must be a whole number of at least 1, got 0"),
    Case("training", "`--output_dir` another run is writing", CLEAR_ERROR, "refused, naming the other run's process",
         settings(), r"error: output_dir \S*eval is in use by another run \(process \d+\)",
         before=held_by_another_run("eval")),
    Case("text_pipeline", "`build --epochs -5`", CLEAR_ERROR,
         "refused before anything is written (was: the shipped anchors rewritten first)",
         lambda case_dir, scans: ["build", "--epochs", "-5"], "error: argument --epochs: must be at least 1, got -5"),
]  # fmt: skip
CASES = [replace(case, id=f"{number:02d}") for number, case in enumerate(CASES, 1)]


# running a case


def environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def bundle_command(workflow: str, arguments: list[str]) -> subprocess.CompletedProcess:
    configs = {"inferring": INFERENCE, "evaluating": EVALUATION, "training": "configs/train.yaml"}[workflow]
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", configs, *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600, env=environment())


def run_case(case: Case, case_dir: Path, scans: dict) -> subprocess.CompletedProcess:
    if case.entry == "symptom_query.py":
        command, folder = [sys.executable, "scripts/symptom_query.py", *case.arguments(case_dir, scans)], BUNDLE
    elif case.entry == "text_pipeline":
        command, folder = [sys.executable, "-m", "text_pipeline", *case.arguments(case_dir, scans)], REPO
    else:
        return bundle_command(case.entry, case.arguments(case_dir, scans))
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600, env=environment())


# the README's table


def table() -> str:
    """The README's table of inputs and its totals, from the catalogue."""
    rows = ["| # | command | input | outcome | what it gets |", "|---|---|---|---|---|"]
    rows += [f"| {case.id} | `{case.entry}` | {case.given} | {case.outcome} | {case.gets} |" for case in CASES]
    count = {outcome: sum(case.outcome == outcome for case in CASES) for outcome in (CLEAR_ERROR, HANDLED, LIMIT)}
    totals = (
        f"Tried: {len(CASES)}. Clear error: {count[CLEAR_ERROR]}. Handled: {count[HANDLED]}. Silent wrong answer: 0. "
        f"Partial output left: 0. Failing outside the bundle's reach: {count[LIMIT]}."
    )
    return "\n".join(rows) + "\n\n" + totals


if __name__ == "__main__":
    print(table())
