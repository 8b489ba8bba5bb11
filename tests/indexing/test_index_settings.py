"""IndexSettings checks itself where it is made: the library gets the CLI's one-line errors,
and sizes as the CLI writes them."""

import pytest

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.indexing.settings import IndexSettings


def test_sizes_are_taken_as_the_cli_writes_them():
    assert IndexSettings(memory_budget="8G").memory_budget == 8 << 30
    assert IndexSettings(memory_budget="512MiB").memory_bytes == 512 << 20
    assert IndexSettings(memory_budget=1000).memory_budget == 1000
    assert IndexSettings().memory_bytes is None
    assert IndexSettings(index_type=" flat ").index_type == "Flat"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shard_size": 0}, "--shard-size must be at least 1"),
        (
            {"shard_size": defaults.MAX_STORED_INT + 1},
            f"--shard-size is at most {defaults.MAX_STORED_INT}, not {defaults.MAX_STORED_INT + 1}",
        ),
        ({"memory_budget": "0G"}, "--memory-budget must be more than 0 bytes, not '0G'"),
        ({"memory_budget": 0}, "--memory-budget must be more than 0 bytes, not 0"),
        (
            {"memory_budget": "lots"},
            "size 'lots' is not a number with an optional unit K, M, G or T (e.g. 8G)",
        ),
    ],
)
def test_bad_settings_are_one_line_usage_errors(fields, message):
    with pytest.raises(UsageError) as refused:
        IndexSettings(**fields)
    assert str(refused.value) == message
    assert refused.value.exit_code == 2
