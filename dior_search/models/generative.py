"""The generative baseline: the VLM answers the DIOR prompt, a sentence encoder embeds the text.

It follows the paper's code (`processors/generative.py` and `entities/config.py` there): greedy
decoding (`do_sample=False`, `temperature=None`, the model's other generation settings as its
`generation_config` has them) of at most 16 new tokens, with the model's own positions (that
code passes no position ids to `generate`). That code decodes the whole output sequence, prompt
included, with special tokens skipped, and embeds that text with Sentence-T5
(`sentence-transformers/sentence-t5-base`); `encode_prompt=False` embeds the answer alone.

Rows are left-padded for `generate`, and each row's positions count its own tokens only, so a
batch gives the answers that one row at a time gives. Each distinct text is encoded alone, so
its vector does not depend on which texts share its batch.

`AnswerTextEncoder` is the text side alone: it embeds answers already given (those a DIOR index
stores, see models.answers) as this baseline embeds the ones it generates, without loading the
vision-language model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dior_search.data.images import fit_within
from dior_search.errors import ModelError, first_line
from dior_search.models.embedder import EmbedderDescription, ProgressCallback
from dior_search.models.families import InputBuilder, check_image_size, load_input_builder
from dior_search.models.loading import (
    describe_loaded,
    load_model_config,
    model_identity,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import GenerativeSettings
from dior_search.models.text_encoder import TextEncoder

# Tensors with one entry per token, which move with the tokens when padding moves left.
PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


@dataclass(frozen=True)
class Generated:
    """One row's answer (the new tokens) and the text that is embedded for it."""

    answer: str
    text: str


class GenerativeEmbedder:
    """Embeddings of a VLM's one-word answers, made by a sentence encoder."""

    def __init__(self, settings: GenerativeSettings) -> None:
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.source = resolve_model_source(settings.model)
        self.config = load_model_config(self.source, settings.revision, settings.trust_remote_code)
        self.dtype = resolve_dtype(settings.dtype, self.device, self.config)
        # The model's own positions: the paper's code passes no position ids to `generate`.
        self.inputs: InputBuilder = load_input_builder(
            self.config,
            self.source,
            revision=settings.revision,
            trust_remote_code=settings.trust_remote_code,
            position_scheme="native",
            max_pixels=settings.max_pixels,
        )
        common = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, **common)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.source, dtype=self.dtype, **common
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load {self.source!r} as a text-generating VLM: {first_line(exc)}"
            ) from None
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids: set[int] = (
            set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        )
        # Finished rows are padded with what the paper's code uses: pad, else eos, else unk.
        candidates = [self.tokenizer.pad_token_id, self.tokenizer.eos_token_id]
        candidates.append(self.tokenizer.unk_token_id)
        self.pad_id: int | None = next((t for t in candidates if t is not None), None)
        self.encoder = TextEncoder(
            settings.text_encoder, settings.text_encoder_revision, self.device
        )

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def describe(self) -> EmbedderDescription:
        """What makes these embeddings, for the index manifest."""
        encoder_commit, encoder_fingerprint = model_identity(
            self.settings.text_encoder, self.settings.text_encoder_revision
        )
        return describe_loaded(
            self.settings,
            self.source,
            self.config,
            self.dtype,
            self.dim,
            text_encoder_commit=encoder_commit,
            text_encoder_fingerprint=encoder_fingerprint,
        )

    def check_size(self, width: int, height: int) -> None:
        """ImageRefused if the input builder would refuse such an image shrunk to max_side."""
        check_image_size(self.inputs, width, height, self.settings.max_side)

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embedded answers for every image and condition: float32 (images, conditions, dim)."""
        return self.embed_with_answers(images, conditions, on_progress)[0]

    def embed_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """The embeddings and the answers, `answers[image][condition]`."""
        prompts = [build_prompt(self.settings.template, c) for c in conditions]
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        generated: list[Generated] = []
        step = self.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            generated += self.generate(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk]
            )
            if on_progress is not None:
                on_progress(len(chunk))
        # Many rows share an answer: each distinct text is encoded once.
        encoded = self.encoder.encode_each([g.text for g in generated])
        vectors = np.array([encoded[g.text] for g in generated], np.float32).reshape(
            len(images), len(prompts), self.dim
        )
        answers = [g.answer for g in generated]
        width = len(prompts)
        return vectors, [answers[i * width : (i + 1) * width] for i in range(len(images))]

    @torch.inference_mode()
    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Generated]:
        """Greedy answers to (image, prompt) rows, generated as one batch."""
        fitted = [fit_within(image, self.settings.max_side) for image in images]
        batch = self.inputs.build(fitted, prompts).to(self.device, self.dtype)
        inputs = left_padded(batch.inputs)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.settings.max_new_tokens,
            do_sample=False,
            temperature=None,
            pad_token_id=self.pad_id,
        )
        width = inputs["input_ids"].shape[1]
        lengths = batch.inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, length in enumerate(lengths):
            new = self.until_eos(output[row, width:].tolist())
            prompt = batch.inputs["input_ids"][row, :length].tolist()
            answer = self.decode(new)
            results.append(
                Generated(
                    answer, self.decode(prompt + new) if self.settings.encode_prompt else answer
                )
            )
        return results

    def until_eos(self, tokens: list[int]) -> list[int]:
        """The tokens up to and including the first end-of-sequence, where one row stops alone."""
        for position, token in enumerate(tokens):
            if token in self.eos_ids:
                return tokens[: position + 1]
        return tokens

    def decode(self, tokens: list[int]) -> str:
        text: str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return text


def left_padded(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded inputs with each row's padding moved to its start, as `generate` needs."""
    mask = inputs["attention_mask"]
    width = mask.shape[1]
    shift = width - mask.long().sum(dim=1, keepdim=True)
    source = (torch.arange(width, device=mask.device) - shift) % width
    moved = {
        name: tensor.gather(1, source) if name in PER_TOKEN else tensor
        for name, tensor in inputs.items()
    }
    # Pad with the row's last prompt token: a repetition penalty, which looks at every input
    # token, then treats a padded row as it treats that row alone.
    ids = moved["input_ids"]
    moved["input_ids"] = torch.where(moved["attention_mask"].bool(), ids, ids[:, -1:])
    return moved


class AnswerTextEncoder:
    """The generative baseline's text side: the text it embeds for an answer (the prompt and
    the answer as its output decodes, special tokens skipped; or the answer alone), encoded as
    it encodes them. Where a stored answer is what the model generates, the vector is the
    generated answer's."""

    def __init__(self, settings: GenerativeSettings) -> None:
        self.settings = settings
        source = resolve_model_source(settings.model)
        config = load_model_config(source, settings.revision, settings.trust_remote_code)
        self.inputs: InputBuilder = load_input_builder(
            config,
            source,
            revision=settings.revision,
            trust_remote_code=settings.trust_remote_code,
            position_scheme="native",
            max_pixels=settings.max_pixels,
        )
        self.encoder = TextEncoder(
            settings.text_encoder, settings.text_encoder_revision, resolve_device(settings.device)
        )

    def text(self, condition: str | None, answer: str) -> str:
        tokenizer = self.inputs.tokenizer
        answer_ids: list[int] = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = answer_ids
        if self.settings.encode_prompt:
            prompt = build_prompt(self.settings.template, condition)
            ids = tokenizer(self.inputs.chat_text(prompt))["input_ids"] + answer_ids
        text: str = tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def embed_answers(self, condition: str | None, answers: Sequence[str]) -> np.ndarray:
        """Float32 (len(answers), dim): each answer under `condition`, as the baseline embeds
        a generated one."""
        # Answers repeat (one word per image): each distinct one is templated and encoded once.
        texts = {answer: self.text(condition, answer) for answer in dict.fromkeys(answers)}
        encoded = self.encoder.encode_each(list(texts.values()))
        rows = [encoded[texts[answer]] for answer in answers]
        return np.array(rows, np.float32).reshape(len(answers), -1)
