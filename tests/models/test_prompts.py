import pytest

from dior_search.errors import UsageError
from dior_search.models.prompts import PROMPT_TEMPLATES, build_prompt


def test_default_prompt_is_the_papers():
    assert build_prompt("describe", "color") == 'Describe this image in one word regarding color: "'
    assert build_prompt("describe", None) == 'Describe this image in one word: "'
    assert build_prompt("describe", "") == 'Describe this image in one word: "'


def test_seven_templates():
    assert len(PROMPT_TEMPLATES) == 7
    assert build_prompt("depict", "genre") == 'Depict this image in one word, considering genre: "'
    assert build_prompt("describe-free", None) == 'Describe this image: "'


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(
        UsageError, match="unknown prompt template 'portray'; valid: describe, express"
    ):
        build_prompt("portray", "color")
