"""DIOR's answer decoding: the model's own answer to every prompt, against the pass's KV cache.

The output head (only `lm_head.weight`, or the tied input embeddings) applied to the last
layer's state at the prompt's last token gives the answer's first token; the next ones are
decoded greedily against the KV cache the embedding pass leaves, a token per (image, condition)
a step (see models.answers for where an answer ends). A `Decoder` runs those steps over the
cache of one pass: `RowDecoder` where each (image, prompt) has its own cache row, and
`PackedDecoder` where an image's suffixes were packed into one row. `AnswerDecoding` joins the
caches of several passes so that a step reads the model's weights once for all their rows.
Where the vectors come from the answer's tokens (`first_output`, `mean_output`),
`AnswerTokenStates` collects them during the same decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dior_search import defaults
from dior_search.models.answers import Answer, AnswerText, HeadRows, is_tied, stop_tokens
from dior_search.models.dior_model import DiorModel, to_numpy
from dior_search.models.dior_packed_suffixes import Packed, attention_mask

# A forward pass that returns the hidden states a decoding step reads, one (rows, tokens, dim)
# tensor per layer read (`DiorModel.step_hidden`).
StepRun = Callable[..., list[torch.Tensor]]


class AnswerTokenStates:
    """The chosen layers' states as each row's answer tokens are fed back: the first one
    (first_output) or their running sum and count (mean_output)."""

    def __init__(self, source: str, rows: int) -> None:
        self.source = source
        self.first: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.count = torch.zeros(rows)

    def add(self, hidden: torch.Tensor, fed: torch.Tensor) -> None:
        """`hidden` (rows, n_layers, dim): a step's states; `fed`: the rows it fed a token."""
        if self.first is None:
            self.first = hidden.float()
        if self.source == "mean_output":
            kept = hidden.float() * fed.to(hidden.device)[:, None, None]
            self.total = kept if self.total is None else self.total + kept
            self.count += fed.float()

    def vectors(self) -> np.ndarray:
        """float32 (rows, n_layers, dim)."""
        if self.first is None:
            raise ValueError("no answer token was fed back")
        if self.source == "first_output" or self.total is None:
            return to_numpy(self.first)
        return to_numpy(self.total / self.count.to(self.total.device)[:, None, None])


class Decoder:
    """One greedy step for every (image, prompt) row still decoding, against the KV cache of
    the pass that made the vectors."""

    cache: Any

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Run `tokens` (one per row) of the `active` rows; the states the step reads at each
        row's new token (rows, layers read, dim; rows not active: zeros)."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Columns of the cache (its sequence length)."""
        return int(self.cache.get_seq_length())


# What decodes the answers of (states, decoder): the answers, and the vectors read from the
# answer's tokens where that is the source (`AnswerReader.decode`).
Decode = Callable[[torch.Tensor, Decoder], tuple[list[Answer], np.ndarray | None]]


class AnswerDecoding:
    """Answers of several passes decoded together: their caches joined (right-padded to one
    width, what a row may see said by its mask), so that each decoding step reads the model's
    weights once for up to `answer_rows` rows (`Throughput.answer_rows`)."""

    def __init__(self, decode: Decode, answer_rows: int) -> None:
        self.decode, self.answer_rows = decode, answer_rows
        self.waiting: list[tuple[torch.Tensor, Decoder]] = []
        self.answers: list[Answer] = []
        # Where the vectors come from the answer's tokens: theirs, in the order of the rows.
        self.states: list[np.ndarray] = []

    def add(self, states: torch.Tensor, decoder: Decoder) -> None:
        self.waiting.append((states, decoder))
        if sum(len(s) for s, _ in self.waiting) >= self.answer_rows:
            self.flush()

    def flush(self) -> None:
        decoders = [decoder for _, decoder in self.waiting]
        joined = join_decoders(decoders) if len(decoders) > 1 else None
        if joined is not None:
            states = torch.cat([states for states, _ in self.waiting])
            self.take(*self.decode(states, joined))
        else:
            for states, decoder in self.waiting:
                self.take(*self.decode(states, decoder))
        self.waiting = []

    def take(self, answers: list[Answer], outputs: np.ndarray | None) -> None:
        self.answers += answers
        if outputs is not None:
            self.states.append(outputs)

    def finish(self) -> list[Answer]:
        self.flush()
        return self.answers

    def outputs(self) -> np.ndarray | None:
        """The vectors read from the answers' tokens (rows, n_layers, dim), once finished;
        None where none were read."""
        return np.concatenate(self.states) if self.states else None


def join_caches(caches: Sequence[Any]) -> Any | None:
    """One cache of the rows of `caches`, each right-padded with zeros to the widest; None
    where a layer is not a plain dynamic one (sliding windows keep more state)."""
    from transformers.cache_utils import DynamicLayer

    layers = [cache.layers for cache in caches]
    if any(type(layer) is not DynamicLayer for group in layers for layer in group):
        return None
    joined = caches[0]
    width = max(cache.get_seq_length() for cache in caches)
    for number, layer in enumerate(joined.layers):

        def padded(tensor: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, 0, 0, width - tensor.shape[-2]))

        layer.keys = torch.cat([padded(group[number].keys) for group in layers])
        layer.values = torch.cat([padded(group[number].values) for group in layers])
    return joined


def pad_columns(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """A (rows, columns) tensor right-padded with `value` to `width` columns."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def join_decoders(decoders: Sequence[Decoder]) -> Decoder | None:
    """One decoder of the rows of `decoders` (all of one kind), their caches joined; None where
    they cannot be (mixed kinds, or caches that are not plain dynamic ones)."""
    width = max(decoder.width for decoder in decoders)
    if all(isinstance(d, RowDecoder) for d in decoders):
        rows = [d for d in decoders if isinstance(d, RowDecoder)]
        cache = join_caches([d.cache for d in rows])
        if cache is None:
            return None
        mask = torch.cat([pad_columns(d.mask, width, 0) for d in rows])
        return RowDecoder(rows[0].run, cache, mask, torch.cat([d.next_position for d in rows]))
    if all(isinstance(d, PackedDecoder) for d in decoders):
        packed = [d for d in decoders if isinstance(d, PackedDecoder)]
        if len({d.n_prompts for d in packed}) > 1:
            return None
        cache = join_caches([d.cache for d in packed])
        if cache is None:
            return None
        owner = torch.cat([pad_columns(d.owner, width, HIDDEN) for d in packed])
        positions = torch.cat([d.next_position for d in packed])
        return PackedDecoder(packed[0].run, cache, owner, positions, packed[0].mask_dtype)
    return None


class RowDecoder(Decoder):
    """A cache row per (image, prompt): each step a token per row, with a 2-D mask over the
    row's cache (pads hidden) and the row's own explicit position. Finished rows are dropped
    from the cache."""

    def __init__(
        self, run: StepRun, cache: Any, mask: torch.Tensor, next_position: torch.Tensor
    ) -> None:
        self.run, self.cache = run, cache
        self.mask, self.next_position = mask, next_position
        self.rows = torch.arange(mask.shape[0], device=mask.device)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        keep = active[self.rows]
        if not keep.all():
            kept = torch.nonzero(keep).flatten()
            self.cache.batch_select_indices(kept)
            self.rows, self.mask = self.rows[kept], self.mask[kept]
            self.next_position = self.next_position[kept]
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        hidden = self.run(
            {
                "input_ids": tokens[self.rows][:, None],
                "attention_mask": self.mask,
                "position_ids": self.next_position[:, None],
            },
            cache=self.cache,
            use_cache=True,
        )
        self.next_position = self.next_position + 1
        states = torch.stack([layer[:, 0] for layer in hidden], dim=1)  # (kept, layers, dim)
        out = states.new_zeros((tokens.shape[0], *states.shape[1:]))
        out[self.rows] = states
        return out


# Who may see a cache column of a packed row: every prompt of its image (the image's prefix),
# none (padding), or one prompt (its suffix and answer tokens: that prompt's number).
SHARED, HIDDEN = -2, -1


class PackedDecoder(Decoder):
    """A cache row per image (its packed suffixes): each step one token per prompt in the
    image's row, each seeing the image's prefix and its own prompt's columns (4-D mask).
    Images whose prompts have all finished are dropped from the cache."""

    def __init__(
        self,
        run: StepRun,
        cache: Any,
        owner: torch.Tensor,
        next_position: torch.Tensor,
        mask_dtype: torch.dtype,
    ) -> None:
        """`owner`: per image and cache column, SHARED, HIDDEN or the prompt it belongs to;
        `next_position`: per image and prompt, the position of its next token."""
        self.run, self.cache, self.mask_dtype = run, cache, mask_dtype
        self.owner, self.next_position = owner, next_position
        self.images = torch.arange(owner.shape[0], device=owner.device)
        self.n_prompts = next_position.shape[1]

    @classmethod
    def after_packing(
        cls,
        run: StepRun,
        cache: Any,
        prefix_mask: torch.Tensor,
        packed: Packed,
        next_position: torch.Tensor,
        mask_dtype: torch.dtype,
    ) -> PackedDecoder:
        """The decoder of a packed suffix pass: the prefix (its real tokens) seen by every
        prompt, each packed column by its own prompt."""
        prefix = torch.where(prefix_mask.bool(), SHARED, HIDDEN)
        owner = torch.cat([prefix, packed.owner], dim=1)
        return cls(run, cache, owner, next_position[:, None] + packed.lengths, mask_dtype)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        keep = active.reshape(-1, self.n_prompts)[self.images].any(dim=1)
        if not keep.all():
            kept = torch.nonzero(keep).flatten()
            self.cache.batch_select_indices(kept)
            self.images, self.owner = self.images[kept], self.owner[kept]
            self.next_position = self.next_position[kept]
        n = len(self.images)
        prompts = torch.arange(self.n_prompts, device=self.owner.device)
        self.owner = torch.cat([self.owner, prompts.expand(n, -1)], dim=1)
        seen = (self.owner[:, None, :] == SHARED) | (
            self.owner[:, None, :] == prompts[None, :, None]
        )
        hidden = self.run(
            {
                "input_ids": tokens.reshape(-1, self.n_prompts)[self.images],
                "attention_mask": attention_mask(seen[:, None], self.mask_dtype),
                "position_ids": self.next_position,
            },
            cache=self.cache,
            use_cache=True,
        )
        self.next_position = self.next_position + 1
        states = torch.stack(hidden, dim=2)  # (kept images, prompts, layers, dim)
        out = states.new_zeros((tokens.shape[0] // self.n_prompts, *states.shape[1:]))
        out[self.images] = states
        return out.reshape(tokens.shape[0], *states.shape[2:])


class AnswerReader:
    """Greedy answers from the last layer's states, decoded with the loaded model's head."""

    # How an answer is cut from its tokens (a benchmark may make every answer one length).
    answer_text: type[AnswerText] = AnswerText

    def __init__(self, loaded: DiorModel) -> None:
        self.loaded = loaded
        self._head: torch.Tensor | None = None
        self._stops: frozenset[int] | None = None

    def head_matrix(self) -> torch.Tensor:
        """The output head W_U (vocabulary x hidden) on the device, in the model's dtype: the
        input embeddings of a tied model, else `lm_head.weight` read from the checkpoint."""
        if self._head is None:
            loaded = self.loaded
            if is_tied(loaded.config):
                self._head = loaded.model.get_input_embeddings().weight
            else:
                revision = loaded.settings.revision
                matrix = HeadRows(loaded.source, revision, loaded.config).matrix()
                self._head = matrix.to(loaded.device, loaded.dtype)
        return self._head

    def stops(self) -> frozenset[int]:
        """The tokens that end an answer (the end of the turn, ...): see models.answers."""
        if self._stops is None:
            self._stops = stop_tokens(self.loaded.inputs.tokenizer, self.loaded.config)
        return self._stops

    @torch.inference_mode()
    def decode(
        self, states: torch.Tensor, decoder: Decoder
    ) -> tuple[list[Answer], np.ndarray | None]:
        """Greedy answers from the last layer's `states` (rows, dim): the first token from
        W_U h, the next ones by `decoder` steps against the cache, until each row's word is
        complete or `MAX_ANSWER_TOKENS`. Finished rows leave the steps.

        Where the vectors come from the answer's tokens, also those vectors: float32 (rows,
        n_layers, dim), the chosen layers' states as each answer token is fed back (see the
        module: the first token is always fed back; mean_output averages the fed ones).
        """
        loaded = self.loaded
        head = self.head_matrix()
        logits = (states.to(head.dtype) @ head.T).float()
        log_partition = torch.logsumexp(logits, dim=-1)
        logprobs = logits - log_partition[:, None]
        rows = states.shape[0]
        texts = [self.answer_text() for _ in range(rows)]
        active = torch.ones(rows, dtype=torch.bool)
        outputs = (
            AnswerTokenStates(loaded.embedding_source, rows) if loaded.reads_answer_tokens else None
        )
        for number in range(defaults.MAX_ANSWER_TOKENS):
            tokens, active = self.take_tokens(logprobs, texts, active)
            # The first answer token is fed back even where it ends the answer: its state is
            # first_output (and all of mean_output).
            fed = active | torch.tensor(number == 0 and loaded.reads_answer_tokens)
            if not fed.any():
                break
            hidden = decoder.step(tokens, fed.to(tokens.device))
            if outputs is not None:
                outputs.add(hidden[:, : len(loaded.layers)], fed)
            last = hidden[:, loaded.decode_position if loaded.reads_answer_tokens else 0]
            logprobs = torch.log_softmax((last.to(head.dtype) @ head.T).float(), dim=-1)
        found = [
            Answer(text.word(), text.logprob, float(z))
            for text, z in zip(texts, log_partition.tolist(), strict=True)
        ]
        return found, None if outputs is None else outputs.vectors()

    def take_tokens(
        self, logprobs: torch.Tensor, texts: list[AnswerText], active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's greedy token, added to the answers of the `active` rows; the tokens,
        and which rows' answers are still open after them."""
        best, tokens = logprobs.max(dim=-1)
        # One copy to the host a step, not two per row.
        best_host, tokens_host = best.tolist(), tokens.tolist()
        tokenizer, stops = self.loaded.inputs.tokenizer, self.stops()
        for row in torch.nonzero(active).flatten().tolist():
            texts[row].add(tokens_host[row], best_host[row], tokenizer, stops)
        return tokens, torch.tensor([not text.done for text in texts])
