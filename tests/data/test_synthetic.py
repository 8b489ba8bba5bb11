from collections import Counter

from dior_search.data.synthetic import (
    CONDITIONS,
    LABEL_VALUES,
    iter_split,
    make_item,
    write_dataset,
)


def test_items_are_deterministic():
    (a, image_a), (b, image_b) = make_item(0, "test", 5), make_item(0, "test", 5)
    assert a == b
    assert image_a.tobytes() == image_b.tobytes()
    _, image_other = make_item(1, "test", 5)
    assert image_other.tobytes() != image_a.tobytes()


def test_splits_differ_and_cover_every_label():
    train = [item for item, _ in iter_split("train", 300)]
    test = [item for item, _ in iter_split("test", 300)]
    assert [i.file_name for i in train] != [i.file_name for i in test]
    for condition, values in LABEL_VALUES.items():
        counts = Counter(item.label(condition) for item in test)
        assert set(counts) == set(values)
        assert min(counts.values()) >= 300 / len(values) / 2


def test_image_sizes_vary():
    sizes = {image.size for _, image in iter_split("test", 40)}
    assert len(sizes) >= 3


def test_write_dataset_is_idempotent(tmp_path):
    first = write_dataset(tmp_path, {"test": 12})
    data = (tmp_path / first[3].file_name).read_bytes()
    second = write_dataset(tmp_path, {"test": 12})
    assert first == second
    assert (tmp_path / first[3].file_name).read_bytes() == data
    assert (tmp_path / "labels.csv").read_text().splitlines()[0] == (
        "file_name,split,color,background,pattern,size"
    )
    assert set(CONDITIONS) == set(LABEL_VALUES)
