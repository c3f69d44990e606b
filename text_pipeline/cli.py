"""``python -m text_pipeline <stage>``: one subcommand per stage of the text pipeline, and ``build``.

Online stages (retrieve, filter, expand) reach PubMed, Wikipedia and an OpenAI-compatible server; the
offline ones (embed, fine-tune, anchors, train, evaluate, figures, build) start from the shipped corpus.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from text_pipeline import pipeline
from text_pipeline.corpus import OOD_QUERIES, OOD_TRAINING_TEXTS, read_corpus, read_jsonl, read_queries
from text_pipeline.labels import LABEL_KINDS
from text_pipeline.llm import MissingAPIKeyError

logger = logging.getLogger("text_pipeline")


def _add_artifacts(parser: argparse.ArgumentParser, encoder_help: str | None = None) -> None:
    parser.add_argument("--artifacts", type=Path, default=pipeline.DEFAULT_ARTIFACTS, help="artifact folder")
    if encoder_help:
        parser.add_argument("--encoder", default="minilm", help=encoder_help)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings(args: argparse.Namespace) -> pipeline.BuildSettings:
    overrides = {"encoder": getattr(args, "encoder", None) or "minilm"}
    if getattr(args, "epochs", None):
        overrides["mlp_epochs"] = args.epochs
    if getattr(args, "fine_tune_epochs", None):
        overrides["fine_tune_epochs"] = args.fine_tune_epochs
    if getattr(args, "fine_tune", None) is not None:
        overrides["fine_tune"] = args.fine_tune
    settings = pipeline.BuildSettings(**overrides)
    settings.check()
    return settings


def _retrieve(args: argparse.Namespace) -> None:
    from text_pipeline.retrieval.pubmed import PubMedClient
    from text_pipeline.retrieval.retrieve import load_keywords, retrieve
    from text_pipeline.retrieval.wikipedia import WikipediaClient

    keywords = load_keywords(args.keywords) if args.keywords else load_keywords()
    pubmed = PubMedClient(cache_dir=args.cache_dir / "pubmed") if "pubmed" in args.sources else None
    wikipedia = WikipediaClient(cache_dir=args.cache_dir / "wikipedia") if "wikipedia" in args.sources else None
    count = retrieve(
        keywords, args.out, pubmed=pubmed, wikipedia=wikipedia, per_keyword=args.per_keyword, progress=True
    )
    print(f"{count} documents -> {args.out}")


def _chunk(args: argparse.Namespace) -> None:
    from text_pipeline.retrieval.retrieve import chunk

    print(f"{chunk(args.documents, args.out)} chunks -> {args.out}")


def _llm_stage(args: argparse.Namespace) -> None:
    from text_pipeline.llm import LLMConfig, expand_chunks, filter_chunks, make_client, write_jsonl

    config = LLMConfig(base_url=args.base_url, model=args.model, concurrency=args.concurrency)
    client = make_client(config)
    chunks = [item for _, item in read_jsonl(args.chunks)]
    journal = args.journal or args.out.with_suffix(".journal.jsonl")
    if args.stage == "filter":
        results = filter_chunks(chunks, client, config, journal)
    else:
        results = expand_chunks(chunks, client, config, journal, n=args.n)
    write_jsonl(args.out, list(results))
    print(f"{len(results)} texts -> {args.out} ({results.summary.as_dict()})")


def _embed(args: argparse.Namespace) -> None:
    queries = read_corpus() + read_queries(OOD_TRAINING_TEXTS) + read_queries(OOD_QUERIES)
    features = pipeline.embed(queries, args.artifacts, args.encoder)
    print(f"{features.shape[0]} texts embedded ({features.shape[1]}-d) into {args.artifacts / 'embeddings'}")


def _fine_tune(args: argparse.Namespace) -> None:
    summary = pipeline.fine_tune(args.artifacts, _settings(args))
    print(
        f"tuned encoder -> {args.artifacts / pipeline.TUNED_ENCODER_FILE} ({summary['seconds']} s); "
        f"use it with --encoder {pipeline.TUNED_ENCODER}"
    )


def _anchors(args: argparse.Namespace) -> None:
    settings = _settings(args)
    train = read_corpus("train")
    features = pipeline.embed(train, args.artifacts, args.encoder)
    pipeline.build_anchors(features, pipeline.source_organs(train), settings, args.artifacts, args.encoder)
    print(f"anchors -> {args.artifacts / 'anchors.pt'}")


def _train(args: argparse.Namespace) -> None:
    settings = _settings(args)
    anchors = pipeline.load_anchors(args.artifacts)
    train, ood_train = read_corpus("train"), read_queries(OOD_TRAINING_TEXTS)
    features = pipeline.embed(train, args.artifacts, anchors["encoder"])
    ood_features = pipeline.embed(ood_train, args.artifacts, anchors["encoder"])
    pipeline.train_models(train, features, ood_features, anchors, settings, args.artifacts)
    names = ", ".join(f"text_mlp_{kind}.pt" for kind in LABEL_KINDS)
    print(f"text MLPs -> {args.artifacts} ({names})")


def _evaluate(args: argparse.Namespace) -> None:
    queries = read_queries(args.queries) if args.queries else read_corpus("test")
    metrics = pipeline.evaluate(queries, args.artifacts, args.out)
    print(pipeline.metrics_table(metrics))
    print(f"metrics -> {args.out / 'metrics.json'}")


def _figures(args: argparse.Namespace) -> None:
    paths = pipeline.figures(args.artifacts, args.out or args.artifacts / "figures")
    print("\n".join(str(path) for path in paths))


def _build(args: argparse.Namespace) -> None:
    manifest = pipeline.build(args.artifacts, _settings(args))
    print(pipeline.metrics_table(manifest["evaluation"]))
    seconds = ", ".join(f"{stage} {value} s" for stage, value in manifest["seconds"].items())
    print(f"artifacts -> {args.artifacts} ({seconds})")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m text_pipeline", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True)

    retrieve = stages.add_parser("retrieve", help="PubMed abstracts and Wikipedia extracts per organ keyword")
    retrieve.add_argument("--keywords", type=Path, help="organ keywords YAML (default: the shipped one)")
    retrieve.add_argument("--out", type=Path, required=True, help="documents JSONL")
    retrieve.add_argument("--cache-dir", type=Path, default=Path(".cache/text_pipeline"), help="HTTP response cache")
    retrieve.add_argument("--per-keyword", type=int, default=20, help="results per keyword and source")
    retrieve.add_argument("--sources", nargs="+", default=["pubmed", "wikipedia"], choices=["pubmed", "wikipedia"])
    retrieve.set_defaults(run=_retrieve)

    chunk = stages.add_parser("chunk", help="split documents into 2-3 sentence chunks with provenance")
    chunk.add_argument("--documents", type=Path, required=True)
    chunk.add_argument("--out", type=Path, required=True)
    chunk.set_defaults(run=_chunk)

    for name, text in (("filter", "keep chunks an LLM judges to describe symptoms"), ("expand", "LLM-expand chunks")):
        stage = stages.add_parser(name, help=text)
        stage.add_argument("--chunks", type=Path, required=True)
        stage.add_argument("--out", type=Path, required=True)
        stage.add_argument("--journal", type=Path, help="completed-call journal (default: beside --out)")
        stage.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or OpenAI)")
        stage.add_argument("--model", default=None, help="model name (default: $MEDSORA_LLM_MODEL)")
        stage.add_argument("--concurrency", type=int, default=4)
        if name == "expand":
            stage.add_argument("--n", type=int, default=5, help="observations per chunk")
        stage.set_defaults(run=_llm_stage)

    encoder_help = "minilm | openai:<model> | transformers:<dir> | tuned:encoder_tuned.pt (the fine-tuned one)"
    base_help = "the pretrained encoder: minilm | transformers:<dir> (| openai:<model> with build --no-fine-tune)"
    for name, run, text in (
        ("embed", _embed, "embed the shipped corpus and out-of-domain texts (cached by encoder and text)"),
        ("fine-tune", _fine_tune, "fine-tune the encoder on the training split (low-rank adapters, organ sets)"),
        ("anchors", _anchors, "fit positive and negative organ anchors on the training texts"),
        ("train", _train, "train the text MLP on hard, anchor (paper) and calibrated labels"),
        ("figures", _figures, "t-SNE with anchors; hard vs soft label correlation heatmaps"),
        ("build", _build, "the whole offline path from the shipped corpus to the artifacts"),
    ):
        stage = stages.add_parser(name, help=text)
        _add_artifacts(stage, {"embed": encoder_help, "anchors": encoder_help, "fine-tune": base_help}.get(name))
        if name in ("train", "build"):
            stage.add_argument("--epochs", type=_positive_int, help="text MLP epochs (default 200)")
        if name in ("fine-tune", "build"):
            stage.add_argument("--fine-tune-epochs", type=_positive_int, help="encoder fine-tuning epochs (default 3)")
        if name == "build":
            stage.add_argument("--encoder", default="minilm", help=base_help)
            stage.add_argument(
                "--fine-tune",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="fine-tune the encoder first and build on it (default: yes)",
            )
        if name == "figures":
            stage.add_argument("--out", type=Path, help="folder (default: ARTIFACTS/figures)")
        stage.set_defaults(run=run)

    evaluate = stages.add_parser("evaluate", help="rank-k, mAP and OOD AUROC of a queries file")
    _add_artifacts(evaluate)
    evaluate.add_argument("--queries", type=Path, help='JSONL of {"text", "organs", "primary"} (default: test split)')
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.set_defaults(run=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    args = make_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, MissingAPIKeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
