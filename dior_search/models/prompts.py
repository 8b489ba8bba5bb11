"""The paper's prompt templates: one with a condition slot, one without."""

from dataclasses import dataclass

from dior_search import defaults
from dior_search.errors import UsageError


@dataclass(frozen=True)
class PromptTemplate:
    with_condition: str
    without_condition: str


# The seven templates of the paper (and its released code); `describe` is the default.
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "describe": PromptTemplate(
        'Describe this image in one word regarding {condition}: "',
        'Describe this image in one word: "',
    ),
    "express": PromptTemplate(
        'Express this image in one word in terms of {condition}: "',
        'Express this image in one word: "',
    ),
    "summarize": PromptTemplate(
        'Summarize this image in one word regarding {condition}: "',
        'Summarize this image in one word: "',
    ),
    "capture": PromptTemplate(
        'Capture this image in one word based on {condition}: "',
        'Capture this image in one word: "',
    ),
    "convey": PromptTemplate(
        'Convey this image in one word with respect to {condition}: "',
        'Convey this image in one word: "',
    ),
    "depict": PromptTemplate(
        'Depict this image in one word, considering {condition}: "',
        'Depict this image in one word: "',
    ),
    "describe-free": PromptTemplate(
        'Describe this image regarding {condition}: "',
        'Describe this image: "',
    ),
}

DEFAULT_TEMPLATE = defaults.DEFAULT_TEMPLATE


def build_prompt(template: str, condition: str | None) -> str:
    """The prompt text for `condition` (the unconditional prompt when it is None or empty)."""
    try:
        chosen = PROMPT_TEMPLATES[template]
    except KeyError:
        valid = ", ".join(PROMPT_TEMPLATES)
        raise UsageError(f"unknown prompt template {template!r}; valid: {valid}") from None
    if condition:
        return chosen.with_condition.format(condition=condition)
    return chosen.without_condition
