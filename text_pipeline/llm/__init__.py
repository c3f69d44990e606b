"""The LLM half of the symptom corpus (method.md §1): filter chunks, expand them into organ-free observations.

Works with any OpenAI-compatible server. The key comes only from the environment (``OPENAI_API_KEY`` by
default; local servers such as Ollama or vLLM accept any non-empty value: ``OPENAI_API_KEY=unused``); the
server from ``LLMConfig.base_url`` or ``OPENAI_BASE_URL``; the model from ``LLMConfig.model`` or
``MEDSORA_LLM_MODEL``::

    from text_pipeline.llm import LLMConfig, expand_chunks, filter_chunks, make_client

    config = LLMConfig(base_url="http://127.0.0.1:11434/v1", model="llama3.1:8b")
    client = make_client(config)
    kept = filter_chunks(chunks, client, config, "corpus/journal.jsonl")
    texts = expand_chunks(kept, client, config, "corpus/journal.jsonl", n=5)
    print(texts.summary)

Rerunning with the same journal resumes an interrupted build without repeating completed calls.
"""

from text_pipeline.llm.client import LLMConfig, MissingAPIKeyError, call_with_retries, make_client
from text_pipeline.llm.journal import Journal, request_key, write_jsonl
from text_pipeline.llm.prompts import EXPAND_INSTRUCTION, FILTER_QUESTION, InvalidAnswer
from text_pipeline.llm.stages import StageResult, StageSummary, expand_chunks, filter_chunks

__all__ = [
    "EXPAND_INSTRUCTION",
    "FILTER_QUESTION",
    "InvalidAnswer",
    "Journal",
    "LLMConfig",
    "MissingAPIKeyError",
    "StageResult",
    "StageSummary",
    "call_with_retries",
    "expand_chunks",
    "filter_chunks",
    "make_client",
    "request_key",
    "write_jsonl",
]
