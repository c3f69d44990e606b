"""Fine-tuning the text encoder on the corpus' training split (bundle/docs/README.md, "Fine-tuned encoder").

The pretrained weights stay as they are: a low-rank adapter (LoRA, Hu et al. 2021) beside every linear layer of
the transformer learns the change, so the tuned encoder ships as a small file of adapters beside the other text
artifacts (about 1.3 MB for MiniLM) that names the encoder it was tuned from, instead of a 90 MB copy of it.

Objective: classification. A linear head with one sigmoid output per organ reads the unit-length sentence
embedding and is trained with binary cross-entropy against each text's known organ set (every organ a
clinician would consider: 1, the others: 0; out-of-domain texts: all 0). The head is thrown away afterwards;
what is kept is an encoder whose embedding space separates the organs' presentations, and out-of-domain texts
from all of them, which the anchors, the soft labels and the text MLP are then fitted on. Only a share of the
learned update is applied (``interpolation``, 0.5: a point halfway between the pretrained and the tuned weights,
as in WiSE-FT, Wortsman et al. 2022), which generalised better to texts held out of the tuning.

A run writes a checkpoint after every epoch and resumes from it when started again with the same inputs and
settings, so a run killed midway loses at most one epoch; the adapters file appears only when training ends
(written to a temporary file, then renamed), and the checkpoint is removed then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from text_pipeline.encoders import TextEncoder, TorchTextEncoder, make_encoder
from text_pipeline.files import write_torch_atomically

logger = logging.getLogger(__name__)

TUNED_ENCODER_FILE = "encoder_tuned.pt"
CHECKPOINT_FILE = "fine_tuning_checkpoint.pt"
FORMAT_VERSION = 1


class LowRankAdapter(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (LoRA): y = W x + b + (alpha / r) B A x.

    ``B`` starts at zero, so the adapted layer starts as the pretrained one.

    Args:
        base: the pretrained linear layer (its parameters are frozen).
        rank: r, the rank of the update.
        alpha: the update's scale numerator.
        generator: random generator of ``A``'s initial values.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.down = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up) * self.scale

    @torch.no_grad()
    def merged(self, weight: float = 1.0) -> nn.Linear:
        """A plain linear layer with ``weight`` times the update folded into its weight (1: the same outputs as
        the adapter, at the base's cost; between 0 and 1: a point between the pretrained and the tuned layer)."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        linear.weight.copy_(self.base.weight + self.up @ self.down * (self.scale * weight))
        if self.base.bias is not None:
            linear.bias.copy_(self.base.bias)
        return linear.requires_grad_(False).to(self.base.weight.device)


def merge_adapters(module: nn.Module, weight: float = 1.0) -> None:
    """Replace every :class:`LowRankAdapter` in ``module`` by its :meth:`LowRankAdapter.merged` layer."""
    names = [name for name, child in module.named_modules() if isinstance(child, LowRankAdapter)]
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, getattr(parent, attribute).merged(weight))


def add_adapters(module: nn.Module, rank: int, alpha: float, seed: int = 0) -> list[str]:
    """Freeze ``module`` and put a :class:`LowRankAdapter` around each of its linear layers (but a pooler's,
    which mean-pooled sentence embeddings never use). Returns the adapted layers' names, in module order."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = [name for name, child in module.named_modules() if isinstance(child, nn.Linear) and "pooler" not in name]
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, LowRankAdapter(getattr(parent, attribute), rank, alpha, generator))
    if not names:
        raise ValueError(f"{type(module).__name__} has no linear layer to adapt")
    return names


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' trainable tensors, by parameter name."""
    return {
        name: parameter.detach().cpu().clone()
        for name, parameter in module.named_parameters()
        if name.endswith((".down", ".up"))
    }


@dataclass(frozen=True)
class FineTuneSettings:
    """Hyperparameters of :func:`fine_tune_encoder` (chosen on a fifth of the training split held out, see the
    model card; none of them was chosen on the test split)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    logit_scale: float = 16.0  # the head reads unit-length embeddings times this
    interpolation: float = 0.5  # the share of the learned update kept at inference (WiSE-FT; 1: all of it)
    seed: int = 0

    def check(self) -> None:
        for name in ("epochs", "batch_size", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"fine-tuning {name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "alpha", "logit_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"fine-tuning {name} must be positive, got {getattr(self, name)}")


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of adapter tensors: embeddings of differently tuned encoders are cached apart."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def read_tuned_encoder(path: str | Path) -> dict:
    """The content of a tuned-encoder file written by :func:`fine_tune_encoder`, checked.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned encoder {path} does not exist: run `python -m text_pipeline fine-tune` first")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a torch zip
        raise ValueError(f"{path} is not a tuned-encoder file: {error}") from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION or "adapters" not in content:
        raise ValueError(f"{path} is not a tuned-encoder file written by text_pipeline.fine_tuning")
    return content


class TunedEncoder(TextEncoder):
    """An encoder fine-tuned by :func:`fine_tune_encoder`: its base encoder (named in the file) with the file's
    adapters in place.

    Args:
        path: the tuned-encoder file (``encoder_tuned.pt``).
    """

    def __init__(self, path: str | Path) -> None:
        content = read_tuned_encoder(path)
        self.base = make_encoder(content["base"])
        if not isinstance(self.base, TorchTextEncoder):
            raise ValueError(f"{path}: its base encoder {content['base']!r} is not a local torch model")
        settings = content["settings"]
        add_adapters(self.base.module, settings["rank"], settings["alpha"])
        missing = set(content["adapters"]) - set(adapter_state(self.base.module))
        if missing or len(content["adapters"]) != len(adapter_state(self.base.module)):
            raise ValueError(f"{path}: its adapters do not fit the encoder {content['base']!r}")
        self.base.module.load_state_dict(content["adapters"], strict=False)
        merge_adapters(self.base.module, settings.get("interpolation", 1.0))
        self.base.module.eval()
        self.dim = self.base.dim
        self.name = f"tuned:{self.base.name}@{fingerprint(content['adapters'])}"
        interpolation = settings.get("interpolation", 1.0)
        if interpolation != 1.0:  # another encoder: its embeddings are cached apart
            self.name += f"*{interpolation:g}"

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.base._embed(texts)


def _length_bucketed_batches(texts: Sequence[str], batch_size: int, seed: int, window: int = 16) -> list[torch.Tensor]:
    """Index batches of one epoch: texts shuffled, sorted by length within windows of ``window`` batches, and
    the batches shuffled again, so that each batch pads little (a third of the time on the shipped corpus)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start : start + batch_size * window], key=lambda index: len(texts[index]))
        batches += [torch.tensor(chunk[i : i + batch_size]) for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _training_key(base_spec: str, texts: Sequence[str], targets: torch.Tensor, settings: FineTuneSettings) -> str:
    digest = hashlib.sha256(json.dumps({"base": base_spec, "settings": asdict(settings)}, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    digest.update(targets.numpy().tobytes())
    return digest.hexdigest()


def _read_checkpoint(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is started over, and said so
        logger.warning("fine-tuning checkpoint %s is unreadable (%s): starting over", path, error)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("key") != key:
        logger.warning("fine-tuning checkpoint %s is of other texts or settings: starting over", path)
        return None
    return checkpoint


def _summary(base_spec: str, settings: FineTuneSettings, texts: int, adapters: dict, **more) -> dict:
    return {
        "base": base_spec,
        "settings": asdict(settings),
        "texts": texts,
        "adapter_parameters": int(sum(value.numel() for value in adapters.values())),
        "fingerprint": fingerprint(adapters),
        **more,
    }


def fine_tune_encoder(
    base_spec: str,
    texts: Sequence[str],
    targets: torch.Tensor | np.ndarray,
    out_path: str | Path,
    settings: FineTuneSettings = FineTuneSettings(),
    checkpoint_path: str | Path | None = None,
) -> dict:
    """Fine-tune the encoder ``base_spec`` names on ``texts`` and their organ targets; write ``out_path``.

    Args:
        base_spec: a local torch encoder (``"minilm"`` or ``"transformers:<dir>"``; see
            :func:`text_pipeline.encoders.make_encoder`).
        texts: the training texts.
        targets: [N, O] in [0, 1], each text's known organ set (all zero for an out-of-domain text).
        out_path: the tuned-encoder file to write.
        settings: the hyperparameters.
        checkpoint_path: the per-epoch checkpoint (default: ``fine_tuning_checkpoint.pt`` beside ``out_path``);
            a checkpoint of the same inputs and settings is resumed from, any other is started over.

    Returns:
        A summary: the base encoder, the settings, the number of texts, the adapters' size and fingerprint, and
        the epochs resumed and the final loss, or ``reused: True`` when ``out_path`` already held the encoder
        these texts and settings give (it is then kept, not trained again).
    """
    settings.check()
    texts = list(texts)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    if targets.ndim != 2 or targets.shape[0] != len(texts) or not texts:
        raise ValueError(f"need one target row per text, got {len(texts)} texts and targets {tuple(targets.shape)}")
    if not torch.isfinite(targets).all() or targets.min() < 0 or targets.max() > 1:
        raise ValueError("fine-tuning targets must lie in [0, 1]")
    out_path = Path(out_path)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else out_path.with_name(CHECKPOINT_FILE)
    encoder = make_encoder(base_spec)
    if not isinstance(encoder, TorchTextEncoder):
        raise ValueError(f"encoder {base_spec!r} cannot be fine-tuned here: only a local torch model can")

    for leftover in (out_path, checkpoint_path):  # temporary files of a run killed while it was writing
        for partial in leftover.parent.glob(f".{leftover.name}.*.tmp*"):
            partial.unlink(missing_ok=True)
    key = _training_key(base_spec, texts, targets, settings)
    if out_path.is_file():
        try:
            done = read_tuned_encoder(out_path)
        except ValueError:
            done = None
        if done is not None and done.get("trained_on", {}).get("key") == key:
            logger.info("%s was tuned on the same texts with the same settings: kept as it is", out_path)
            return _summary(base_spec, settings, len(texts), done["adapters"], reused=True)
    module = encoder.module
    add_adapters(module, settings.rank, settings.alpha, settings.seed)
    module.eval()  # no dropout: an epoch's result depends only on the weights and the epoch's text order
    head = nn.Linear(encoder.dim, targets.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head.reset_parameters()
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0)

    first_epoch = 0
    checkpoint = _read_checkpoint(checkpoint_path, key)
    if checkpoint is not None:
        module.load_state_dict(checkpoint["adapters"], strict=False)
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        first_epoch = int(checkpoint["epoch"])
        logger.info("fine-tuning resumes after epoch %d from %s", first_epoch, checkpoint_path)

    start_time = time.perf_counter()
    loss_value = float("nan")
    for epoch in range(first_epoch, settings.epochs):
        total = 0.0
        for batch in _length_bucketed_batches(texts, settings.batch_size, settings.seed * 1_000_003 + epoch):
            embeddings = F.normalize(encoder.forward([texts[index] for index in batch]), dim=-1)
            loss = F.binary_cross_entropy_with_logits(head(embeddings * settings.logit_scale), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        loss_value = total / len(texts)
        logger.info(
            "fine-tuning epoch %d/%d: BCE %.4f (%.0f s)",
            epoch + 1,
            settings.epochs,
            loss_value,
            time.perf_counter() - start_time,
        )
        checkpoint = {
            "key": key,
            "epoch": epoch + 1,
            "adapters": adapter_state(module),
            "head": {name: value.detach().clone() for name, value in head.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        }
        write_torch_atomically(checkpoint_path, checkpoint)

    adapters = adapter_state(module)
    content = {
        "format_version": FORMAT_VERSION,
        "base": base_spec,
        "settings": asdict(settings),
        "adapters": adapters,
        "trained_on": {"texts": len(texts), "key": key},
    }
    write_torch_atomically(out_path, content)
    checkpoint_path.unlink(missing_ok=True)
    summary = _summary(base_spec, settings, len(texts), adapters, resumed_after_epoch=first_epoch, final_bce=loss_value)
    logger.info("tuned encoder -> %s (%d adapter parameters)", out_path, summary["adapter_parameters"])
    return summary
