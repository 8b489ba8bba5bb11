"""`ServeSettings` owns the server's limits and their checks: `serve`'s options and a Python
caller reach the same checks, and each message names the option that sets the limit."""

import pytest

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.serve.settings import MIB, ServeSettings


def limits(**changes):
    given = {
        "max_upload_mb": 20.0,
        "max_megapixels": 50.0,
        "timeout": 30.0,
        "max_k": 100,
        "max_decode_mb": None,
    }
    return ServeSettings().with_limit_options(**{**given, **changes})


def test_options_in_their_units_become_the_settings_fields():
    settings = limits(max_upload_mb=1.5, max_megapixels=0.25, timeout=2.5, max_k=7,
                      max_decode_mb=3)  # fmt: skip
    assert settings.max_upload_bytes == 3 * MIB // 2
    assert settings.max_pixels == 250_000
    assert (settings.timeout_s, settings.max_k, settings.max_decode_bytes) == (2.5, 7, 3 * MIB)
    # The defaults of `serve`'s options are the settings' own defaults.
    assert limits() == ServeSettings()
    assert ServeSettings().max_upload_bytes == defaults.MAX_UPLOAD_BYTES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_upload_mb": float("nan")}, "--max-upload-mb must be a positive number, not nan"),
        ({"max_upload_mb": 1e-9}, "--max-upload-mb must allow at least 1 byte, not 0"),
        ({"max_megapixels": float("inf")}, "--max-megapixels must be a positive number, not inf"),
        ({"max_megapixels": -1}, "--max-megapixels must be a positive number, not -1"),
        ({"timeout": 0}, "--timeout must be a positive number, not 0"),
        ({"timeout": float("inf")}, "--timeout must be a positive number, not inf"),
        ({"max_k": 0}, "--max-k must allow at least 1 result, not 0"),
        ({"max_decode_mb": 0.5}, "--max-decode-mb must be at least 1 MiB"),
        ({"max_decode_mb": float("nan")}, "--max-decode-mb must be a positive number, not nan"),
    ],
)
def test_a_limit_out_of_range_names_its_option(changes, message):
    with pytest.raises(UsageError) as caught:
        limits(**changes)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_upload_bytes": 0}, "--max-upload-mb must allow at least 1 byte, not 0"),
        ({"max_pixels": -5}, "--max-megapixels must allow at least 1 pixel, not -5"),
        ({"max_k": 0}, "--max-k must allow at least 1 result, not 0"),
        ({"thumbnail_size": 0}, "thumbnail size must allow at least 1 pixel, not 0"),
        ({"max_decode_bytes": MIB - 1}, "--max-decode-mb must be at least 1 MiB"),
        ({"timeout_s": float("inf")}, "--timeout must be a positive number, not inf"),
        ({"timeout_s": -1.0}, "--timeout must be a positive number, not -1"),
    ],
)
def test_settings_built_in_python_run_the_same_checks(fields, message):
    with pytest.raises(UsageError) as caught:
        ServeSettings(**fields)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-upload-mb", "nan", "--max-upload-mb must be a positive number, not nan"),
        ("--timeout", "inf", "--timeout must be a positive number, not inf"),
        ("--max-k", "0", "--max-k must allow at least 1 result, not 0"),
        ("--max-decode-mb", "0.5", "--max-decode-mb must be at least 1 MiB"),
    ],
)
def test_serve_answers_the_settings_message_before_loading_anything(
    tmp_path, capsys, option, value, message
):
    from dior_search.cli import main

    assert main(["serve", "--indexes", str(tmp_path / "none"), option, value]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
