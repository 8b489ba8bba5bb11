"""Sentence embeddings through transformers, with sentence-transformers folders honoured.

A plain model is mean-pooled over its attention mask and L2-normalised. A sentence-transformers
folder (one with `modules.json`) runs as its modules say: the maximum length and lower-casing
of `sentence_bert_config.json`, then Pooling, Dense and Normalize read from their small config
and weight files, so `sentence-transformers/sentence-t5-base` gives what
`SentenceTransformer.encode` gives, without that library.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dior_search.errors import ModelError, first_line
from dior_search.models.loading import load_model_config

log = logging.getLogger(__name__)

# Encoder-decoder models whose encoder alone embeds text, loaded as sentence-transformers does.
ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel"}
# Pooling modes and their config keys, in the order sentence-transformers concatenates them.
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": torch.nn.Identity,
    "torch.nn.modules.activation.Tanh": torch.nn.Tanh,
}
MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass(frozen=True)
class Pooling:
    """Token poolings concatenated into one sentence vector."""

    modes: tuple[str, ...] = ("mean",)

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        pooled = {
            "cls": lambda: tokens[:, 0],
            "max": lambda: tokens.masked_fill(weights == 0, -1e9).max(dim=1).values,
            "mean": lambda: (tokens * weights).sum(dim=1) / counts,
            "mean_sqrt_len": lambda: (tokens * weights).sum(dim=1) / counts.sqrt(),
        }
        return torch.cat([pooled[mode]() for mode in self.modes], dim=1)


class TextEncoder:
    """A sentence encoder from a Hub id or local path, run in float32."""

    def __init__(self, source: str, revision: str | None, device: torch.device) -> None:
        import transformers

        self.source = source
        self.revision = revision
        self.config = load_model_config(source, revision, False)
        hidden = getattr(self.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ModelError(
                f"{source!r} is a {self.config.model_type} model, not a text encoder "
                "(its config has no hidden_size)"
            )
        modules = self.read_json("modules.json", required=False)
        settings: dict[str, Any] = {}
        if modules is not None:
            settings = self.read_json("sentence_bert_config.json", required=False) or {}
        model_class = getattr(
            transformers, ENCODER_CLASSES.get(self.config.model_type, "AutoModel")
        )
        try:
            self.model = model_class.from_pretrained(source, revision=revision, dtype=torch.float32)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load text encoder {source!r}: {first_line(exc)}") from None
        self.model.to(device).eval()
        self.device = device
        accepted = inspect.signature(self.model.forward).parameters
        self.input_names = [
            n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted
        ]
        self.max_length: int = settings.get("max_seq_length") or min(
            getattr(self.config, "max_position_embeddings", None) or 1 << 30,
            self.tokenizer.model_max_length,
        )
        self.lower_case = bool(settings.get("do_lower_case", False))
        self.pooling = Pooling()
        self.dense: list[tuple[torch.nn.Linear, torch.nn.Module]] = []
        self.normalize = True
        if modules is not None:
            self.read_modules(modules)
        width = hidden * len(self.pooling.modes)
        self._dim: int = self.dense[-1][0].out_features if self.dense else width
        for linear, _ in self.dense:
            linear.to(device)

    @property
    def dim(self) -> int:
        return self._dim

    def read_modules(self, modules: list[dict[str, Any]]) -> None:
        """Follow a sentence-transformers `modules.json`: pooling, dense layers, normalisation."""
        self.normalize = False
        for position, module in enumerate(modules):
            kind = module["type"].rsplit(".", 1)[-1]
            folder = module["path"]
            if kind not in MODULES:
                raise ModelError(
                    f"{self.source!r} has a sentence-transformers {kind} module; "
                    f"supported: {', '.join(MODULES)}"
                )
            if (kind == "Transformer") != (position == 0) or (kind == "Transformer" and folder):
                raise ModelError(
                    f"{self.source!r}: only a Transformer module at the folder's root, first, "
                    "is supported"
                )
            if kind == "Pooling":
                self.pooling = read_pooling(self.read_json(f"{folder}/config.json"), self.source)
            elif kind == "Dense":
                self.dense.append(self.load_dense(folder))
            elif kind == "Normalize":
                self.normalize = True

    def load_dense(self, folder: str) -> tuple[torch.nn.Linear, torch.nn.Module]:
        config = self.read_json(f"{folder}/config.json")
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if activation not in ACTIVATIONS:
            valid = ", ".join(ACTIVATIONS)
            raise ModelError(f"{self.source!r}: Dense activation {activation}; supported: {valid}")
        linear = torch.nn.Linear(
            config["in_features"], config["out_features"], bias=config.get("bias", True)
        )
        safetensors = self.find_file(f"{folder}/model.safetensors")
        if safetensors is not None:
            from safetensors.torch import load_file

            state = load_file(safetensors)
        else:
            state = torch.load(self.model_file(f"{folder}/pytorch_model.bin"), weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return linear, ACTIVATIONS[activation]()

    def find_file(self, name: str) -> Path | None:
        """A file of the model's folder or Hub repository; None if it has no such file."""
        if Path(self.source).is_dir():
            local = Path(self.source) / name
            return local if local.is_file() else None
        return hub_file(self.source, name, self.revision)

    def model_file(self, name: str) -> Path:
        path = self.find_file(name)
        if path is None:
            raise ModelError(f"text encoder {self.source!r} lacks {name}")
        return path

    def read_json(self, name: str, required: bool = True) -> Any:
        path = self.model_file(name) if required else self.find_file(name)
        return None if path is None else json.loads(path.read_text())

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 (len(texts), dim) sentence embeddings."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            # Stripped (and lower-cased if so configured) as sentence-transformers does.
            chunk = [t.strip() for t in texts[start : start + batch_size]]
            if self.lower_case:
                chunk = [t.lower() for t in chunk]
            encoded = self.tokenizer(
                chunk,
                padding=True,
                truncation="longest_first",
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            tokens = self.model(**{k: v for k, v in encoded.items() if k in self.input_names})
            vectors = self.pooling(tokens.last_hidden_state, encoded["attention_mask"])
            for linear, activation in self.dense:
                vectors = activation(linear(vectors))
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=1)
            out[start : start + len(chunk)] = vectors.float().cpu().numpy()
        return out

    def encode_each(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each distinct text's embedding, encoded alone: its vector never depends on the
        texts that happen to share its batch (padding), so one text always gets one vector."""
        return {text: self.encode([text])[0] for text in dict.fromkeys(texts)}


def read_pooling(config: dict[str, Any], source: str) -> Pooling:
    """The pooling a sentence-transformers Pooling config asks for; ModelError if unsupported."""
    modes = tuple(mode for mode, key in POOLING_KEYS.items() if config.get(key))
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    unsupported = [k for k in others if k not in POOLING_KEYS.values()]
    if unsupported or not modes:
        raise ModelError(
            f"{source!r}: pooling {', '.join(unsupported) or 'none'} is not supported; "
            f"supported: {', '.join(POOLING_KEYS)}"
        )
    return Pooling(modes)


def hub_file(repo: str, name: str, revision: str | None) -> Path | None:
    """A Hub repository's file, downloaded or from the cache; None if it has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, name, revision=revision))
    except LocalEntryNotFoundError:
        # Offline, a file never fetched cannot be told from a file the repository lacks.
        log.warning("%s: %s is not in the Hugging Face cache; taken as absent", repo, name)
        return None
    except EntryNotFoundError:
        return None
