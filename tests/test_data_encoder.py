import numpy as np
import pytest

from fnn_fast.data import PAD_KEY, FeatureEncoder, ParsedRows


def small_encoder(min_count=2):
    keys = np.array([[10, 5], [10, 6], [11, PAD_KEY], [10, 5]])
    return FeatureEncoder.fit(keys, [0, 1], ["a", "b"], min_count=min_count)


def test_fit_keeps_keys_seen_min_count_times_per_field():
    encoder = small_encoder(min_count=2)
    np.testing.assert_array_equal(encoder.vocabs[0], [10])  # 11 seen once
    np.testing.assert_array_equal(encoder.vocabs[1], [5])  # 6 seen once, PAD never counts
    np.testing.assert_array_equal(encoder.offsets, [0, 2])
    np.testing.assert_array_equal(encoder.sizes, [2, 2])
    assert encoder.num_features == 4
    assert small_encoder(min_count=1).num_features == (1 + 2) + (1 + 2)


def test_transform_maps_known_keys_unseen_to_oov_and_pad_to_oov_with_value_zero():
    encoder = small_encoder()
    keys = np.array([[10, 5], [10, 6], [11, PAD_KEY], [99, 5]])
    values = np.array([[1, 1], [1, 2], [0.5, 7], [3, 1]], dtype=np.float32)
    ids, out = encoder.transform(keys, values)
    # Field a: OOV 0, key 10 -> 1. Field b: OOV 2, key 5 -> 3.
    np.testing.assert_array_equal(ids, [[1, 3], [1, 2], [0, 2], [0, 3]])
    np.testing.assert_array_equal(out, [[1, 1], [1, 2], [0.5, 0], [3, 1]])  # PAD value -> 0
    assert ids.dtype == np.int64 and out.dtype == np.float32


def test_fields_with_several_slots_share_one_vocabulary():
    keys = np.array([[1, 2, 7], [2, PAD_KEY, 7]])
    encoder = FeatureEncoder.fit(keys, [0, 0, 1], ["tags", "x"])
    np.testing.assert_array_equal(encoder.vocabs[0], [1, 2])
    ids, values = encoder.transform(keys, np.ones(keys.shape, dtype=np.float32))
    np.testing.assert_array_equal(ids, [[1, 2, 4], [2, 0, 4]])
    np.testing.assert_array_equal(values, [[1, 1, 1], [1, 0, 1]])


def test_chunked_fit_and_transform_match_whole_array_on_a_memmap(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 40, size=(1000, 3))
    keys[rng.random(keys.shape) < 0.1] = PAD_KEY
    values = rng.random(keys.shape).astype(np.float32)
    np.save(tmp_path / "keys.npy", keys)
    mapped = np.load(tmp_path / "keys.npy", mmap_mode="r")
    whole = FeatureEncoder.fit(keys, [0, 1, 2], ["a", "b", "c"], min_count=25)
    chunked = FeatureEncoder.fit(mapped, [0, 1, 2], ["a", "b", "c"], min_count=25, chunk_rows=64)
    for v, w in zip(whole.vocabs, chunked.vocabs, strict=True):
        np.testing.assert_array_equal(v, w)
    assert 0 < whole.num_features < 3 * 41  # min_count dropped some keys
    expected = whole.transform(keys, values)
    for got, want in zip(chunked.transform(mapped, values, chunk_rows=100), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_fit_rows_and_transform_rows_use_the_rows_layout():
    rows = ParsedRows(
        labels=np.zeros(2, np.float32),
        keys=np.array([[3, 4], [3, 5]]),
        values=np.ones((2, 2), np.float32),
        slot_fields=np.array([0, 1]),
        field_names=["u", "v"],
    )
    encoder = FeatureEncoder.fit_rows(rows)
    assert FeatureEncoder.fit(rows).num_features == encoder.num_features == 2 + 3
    ids, _ = encoder.transform_rows(rows)
    np.testing.assert_array_equal(ids, [[1, 3], [1, 4]])


def test_save_load_round_trip_is_exact(tmp_path):
    keys = np.array([[2**62, 5, PAD_KEY], [0, 6, PAD_KEY]])  # field "empty" has no vocabulary
    encoder = FeatureEncoder.fit(keys, [0, 1, 2], ["big", "b", "empty"])
    encoder.save(tmp_path / "enc")
    assert {p.name for p in (tmp_path / "enc").iterdir()} == {"encoder.json", "encoder.safetensors"}
    loaded = FeatureEncoder.load(tmp_path / "enc")
    assert loaded.field_names == encoder.field_names and loaded.min_count == encoder.min_count
    for name in ("slot_fields", "offsets", "sizes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(encoder, name))
    for v, w in zip(loaded.vocabs, encoder.vocabs, strict=True):
        assert v.dtype == np.int64
        np.testing.assert_array_equal(v, w)
    values = np.ones(keys.shape, np.float32)
    for got, want in zip(
        loaded.transform(keys, values), encoder.transform(keys, values), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_field_of_id_names_the_owning_field():
    encoder = small_encoder()  # a owns ids 0-1, b owns 2-3
    assert [encoder.field_of_id(i) for i in range(4)] == ["a", "a", "b", "b"]
    with pytest.raises(IndexError):
        encoder.field_of_id(4)


def test_transform_rejects_a_different_slot_layout():
    with pytest.raises(ValueError, match="slot layout"):
        small_encoder().transform(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32))


def test_native_hash_table_encodes_like_the_binary_search():
    """The C++ (key, field) hash table against the numpy path: the same key in several fields,
    small consecutive keys (bucketized numbers), unseen keys, PAD, an empty vocabulary, a
    multi-valued field, and more keys than a chunk."""
    pytest.importorskip("fnn_fast._C")
    rng = np.random.default_rng(0)
    slot_fields = [0, 1, 1, 2, 3]
    keys = np.stack(
        [
            rng.integers(0, 50, 5000),  # small ints, shared with field 1
            rng.integers(0, 60, 5000),
            rng.integers(0, 60, 5000),
            rng.choice(rng.integers(0, 2**62, 200), 5000),  # hashed tokens
            np.full(5000, PAD_KEY),  # never seen: an empty vocabulary
        ],
        axis=1,
    )
    keys[rng.random(keys.shape) < 0.1] = PAD_KEY
    native = FeatureEncoder.fit(keys[:3000], slot_fields, ["a", "b", "c", "d"], min_count=2)
    assert native.native_vocabulary() is not None
    numpy_only = FeatureEncoder.fit(keys[:3000], slot_fields, ["a", "b", "c", "d"], min_count=2)
    numpy_only._table = False
    values = rng.random(keys.shape).astype(np.float32)
    got = native.transform(keys, values, chunk_rows=1024)
    want = numpy_only.transform(keys, values, chunk_rows=1024)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert (got[0][:, 3] > native.offsets[2]).any()  # seen tokens were found, not all OOV
