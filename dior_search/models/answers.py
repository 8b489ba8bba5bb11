"""The model's own one-word answers, read from the state a DIOR vector already is.

The last input token of a DIOR prompt is the newline after the assistant's turn header, and
the last layer's hidden state is taken after the final norm, so `W_U h` (the output head
applied to a DIOR vector) are exactly the logits of the answer's first token. From there the
answer is decoded greedily against the KV cache the embedder already holds, at most
`MAX_ANSWER_TOKENS` tokens, and stops at the closing quote, the end of the turn, whitespace or
punctuation. Stored per row: the normalised answer word, its log-probability (the sum over the
tokens that spelled it) and the log-partition `logsumexp(W_U h)`, with which a query word's
first-token log-probability `W_U[t] . h - logsumexp(W_U h)` comes from the stored vector alone.

The output head is read from the checkpoint alone (`lm_head.weight`, or the input embeddings of
a model that ties them): the full causal LM is never loaded.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dior_search import defaults
from dior_search.errors import ModelError, UsageError

# Characters that may start an answer without being part of it: the model may open its own
# quote, or its first token may carry a leading space (" red").
LEADING = frozenset("\"'`\u201c\u201d\u2018\u2019\u00ab ")
# Inside a word a hyphen joins ("off-white"); at either end it is stripped.
JOINERS = frozenset("-")


@dataclass(frozen=True)
class Answer:
    """One row's answer: the normalised word, its log-probability, and logsumexp(W_U h)."""

    word: str
    logprob: float
    log_partition: float


def is_boundary(char: str) -> bool:
    """Whether `char` ends a word: whitespace, a quote, any punctuation but a joiner, or a
    control character."""
    if char in JOINERS:
        return False
    return char.isspace() or unicodedata.category(char)[0] in "PC"


def normalize_word(text: str) -> str:
    """Lower case, with whitespace, quotes and punctuation stripped from both ends."""
    start, end = 0, len(text)
    while start < end and (is_boundary(text[start]) or text[start] in LEADING | JOINERS):
        start += 1
    while end > start and (is_boundary(text[end - 1]) or text[end - 1] in JOINERS):
        end -= 1
    return text[start:end].lower()


def query_word(text: str) -> str:
    """A word to ask about, normalised as answers are; UsageError for an empty one or a
    phrase (an answer is one word, so a phrase could never be one)."""
    word = normalize_word(text)
    if not word:
        raise UsageError(f"--text {text!r} holds no word: give one word, such as 'red'")
    if any(is_boundary(char) for char in word):
        raise UsageError(
            f"--text {text!r} is not one word: the model answers in one word, ask for one"
        )
    return word


@dataclass
class AnswerText:
    """One row's answer as its tokens arrive: where the word starts and ends in their text,
    and the log-probabilities of the tokens that spell it."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    start: int | None = None
    end: int | None = None
    logprob: float = 0.0
    done: bool = False

    def add(self, token: int, logprob: float, tokenizer: Any, stops: frozenset[int]) -> None:
        """Take the next greedy token; `done` once the word is complete."""
        if token in stops:
            self.done = True
            return
        before = len(self.text)
        self.tokens.append(token)
        self.text = tokenizer.decode(self.tokens, skip_special_tokens=False)
        spelled = False
        for position in range(before, len(self.text)):
            char = self.text[position]
            if self.start is None:
                if char in LEADING:
                    continue
                if is_boundary(char):  # a newline or punctuation before any word: no answer
                    self.done = True
                    break
                self.start = position
            if is_boundary(char):
                self.end = position
                self.done = True
                break
            spelled = True
        if spelled:
            self.logprob += logprob
        if len(self.tokens) >= defaults.MAX_ANSWER_TOKENS:
            self.done = True

    def word(self) -> str:
        if self.start is None:
            return ""
        return normalize_word(self.text[self.start : self.end])


def stop_tokens(tokenizer: Any, config: Any) -> frozenset[int]:
    """Token ids that end the answer: the end of the turn, end of sequence, any special token."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(token_id for token_id, token in added.items() if getattr(token, "special", False))
    for source in (config, config.get_text_config()):
        eos = getattr(source, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return frozenset(ids)


# -- the output head, from the checkpoint -----------------------------------------------------

HEAD_KEY = "lm_head.weight"
EMBEDDINGS_KEY = "embed_tokens.weight"


def is_tied(config: Any) -> bool:
    """Whether the model's output head is its input embedding matrix."""
    text = config.get_text_config()
    return bool(getattr(config, "tie_word_embeddings", False)) or (
        text is not config and bool(getattr(text, "tie_word_embeddings", False))
    )


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a saved model (one, or the shards its index lists)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in names]
    return sorted(folder.glob("*.safetensors"))


def find_head_tensor(files: Sequence[Path], config: Any) -> tuple[Path, str]:
    """(file, key) of the output head's matrix: `lm_head.weight`, or for a tied model the
    language model's input embeddings (vocabulary x hidden size)."""
    from safetensors import safe_open

    text = config.get_text_config()
    shape = [text.vocab_size, text.hidden_size]
    embeddings: tuple[Path, str] | None = None
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle is no dict
                if key.endswith(HEAD_KEY) and list(handle.get_slice(key).get_shape()) == shape:
                    return path, key
                if (
                    key.endswith(EMBEDDINGS_KEY)
                    and list(handle.get_slice(key).get_shape()) == shape
                ):
                    embeddings = (path, key)
    if embeddings is not None and is_tied(config):
        return embeddings
    raise ModelError(
        f"no output head ({HEAD_KEY}, {shape[0]} x {shape[1]}) in the checkpoint: the model's "
        "answers cannot be read (index with --no-answers)"
    )


class HeadRows:
    """Rows of a model's output head read from its checkpoint, a few at a time (for query
    words), without loading the model."""

    def __init__(self, source: str, revision: str | None, config: Any) -> None:
        from dior_search.models.loading import model_folder  # torch: only where a model is

        files = checkpoint_files(model_folder(source, revision))
        if not files:
            raise ModelError(f"model {source!r} has no safetensors checkpoint to read its head")
        self.path, self.key = find_head_tensor(files, config)

    def rows(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 (len(token_ids), hidden size): W_U[t] for each token id."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            matrix = handle.get_slice(self.key)
            rows = [matrix[t : t + 1].float().numpy() for t in token_ids]
        if not rows:
            return np.empty((0, 0), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32)

    def matrix(self) -> Any:
        """The whole head (a torch tensor), for a model whose head is not its input embeddings."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(self.key)


# -- query words ------------------------------------------------------------------------------


def surface_forms(word: str) -> list[str]:
    """How an answer may spell `word`: lower, capitalised and upper case, each with and without
    a leading space (a real Qwen answer usually starts "Red")."""
    cases = dict.fromkeys([word.lower(), word.capitalize(), word.upper()])
    return [form for case in cases for form in (case, " " + case)]


def first_tokens(tokenizer: Any, word: str) -> list[int]:
    """The distinct first tokens of `word`'s surface forms (those the tokenizer encodes
    without an unknown token); UsageError if it encodes none."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    found: dict[int, None] = {}
    for form in surface_forms(word):
        ids = tokenizer(form, add_special_tokens=False)["input_ids"]
        if ids and unknown not in ids:
            found[ids[0]] = None
    if not found:
        raise UsageError(f"--text {word!r}: the model's tokenizer cannot encode this word")
    return list(found)


class WordHead:
    """What a text query needs of a model, without loading it: its tokenizer (loaded with the
    index's settings) and the output head's rows of the words asked about."""

    def __init__(self, source: str, revision: str | None, trust_remote_code: bool) -> None:
        from transformers import AutoTokenizer

        from dior_search.models.loading import load_model_config

        config = load_model_config(source, revision, trust_remote_code)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer of {source!r}: {exc}") from None
        self.head = HeadRows(source, revision, config)

    def word(self, word: str) -> tuple[list[int], np.ndarray]:
        """The first tokens of `word`'s surface forms and their W_U rows (tokens x hidden)."""
        tokens = first_tokens(self.tokenizer, word)
        return tokens, self.head.rows(tokens)
