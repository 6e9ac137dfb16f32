"""The retrieval index: round trip, exact search, exclusions, safety of files and of writes."""
import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fromage_mini.retrieval.index as I
import fromage_mini.retrieval.search as S
from fromage_mini.errors import FromageError
from fromage_mini.retrieval.index import IndexWriter, RetrievalIndex

D = 16


def _meta(n, start=0):
    return [{"path": f"img/{i}.jpg", "caption": f"picture {i} – ünïcode"} for i in range(start, start + n)]


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """300 rows, with a few exact duplicates so that ties occur."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, D)).astype(np.float32)
    x[10:15] = x[5]  # duplicates: equal scores for any query
    return RetrievalIndex.build(tmp_path_factory.mktemp("ix") / "index", x, _meta(300), model_fingerprint="fp-A")


def _reference(idx, q, exclude_rows):
    """Brute force: (n, N) float32 cosine scores with excluded rows at -inf."""
    ref = _unit(np.atleast_2d(q)) @ idx.vectors.astype(np.float32).T
    for j, ex in enumerate(exclude_rows):
        ref[j, list(ex)] = -np.inf
    return ref


def _check_against_reference(idx, q, k, exclude_rows, scores, ids):
    ref = _reference(idx, q, exclude_rows)
    n, N = ref.shape
    kk = min(k, N)
    assert scores.shape == ids.shape == (n, kk) and scores.dtype == np.float32 and ids.dtype == np.int64
    for j in range(n):
        expected = np.sort(ref[j])[::-1][:kk]  # the k best scores (ties make ids ambiguous, not scores)
        np.testing.assert_allclose(scores[j], expected, atol=1e-5)
        valid = ids[j] >= 0
        assert valid.sum() == np.isfinite(expected).sum()
        assert (ids[j][~valid] == -1).all() and np.isneginf(scores[j][~valid]).all()
        got = ids[j][valid]
        assert len(set(got.tolist())) == len(got)  # no row twice
        assert not set(got.tolist()) & set(exclude_rows[j])  # excluded rows never returned
        np.testing.assert_allclose(ref[j, got], scores[j][valid], atol=1e-5)  # ids carry their scores


# ------------------------------------------------------------------ round trip


def test_round_trip_vectors_metadata_and_info(index):
    assert len(index) == 300 and index.dim == D and index.model_fingerprint == "fp-A"
    assert index.vectors.dtype == np.float16 and isinstance(index.vectors, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(index.vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    again = RetrievalIndex.load(index.folder, expected_fingerprint="fp-A")
    np.testing.assert_array_equal(again.vectors, index.vectors)
    assert again.metadata(0) == _meta(1)[0] and again.metadata(299) == _meta(1, 299)[0]
    assert again.metadata_many([3, 1]) == [_meta(1, 3)[0], _meta(1, 1)[0]]
    assert again.metadata_many(np.array([[2, -1]])) == [[_meta(1, 2)[0], None]]
    with pytest.raises(IndexError):
        again.metadata(300)
    info = again.info
    assert (info["format_version"], info["num_rows"], info["dim"], info["dtype"]) == (1, 300, D, "float16")
    # the files are plain formats any tool can read
    assert np.load(index.folder / "vectors.npy", allow_pickle=False).shape == (300, D)
    assert len((index.folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()) == 300


def test_streaming_writer_and_iterable_build_match(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, D)).astype(np.float32)
    with IndexWriter(tmp_path / "w", dim=D, model_fingerprint="fp", extra_info={"note": "hi"}) as w:
        w.add(x[:20], _meta(20))
        w.add(torch.from_numpy(x[20:21]).bfloat16().float(), _meta(1, 20))  # torch input
        w.add(x[21:], _meta(29, 21))
    blocks = [x[:7], x[7], x[8:]]  # (n, d) blocks and a single (d,) row, consumed lazily
    b = RetrievalIndex.build(tmp_path / "b", iter(blocks), iter(_meta(50)), model_fingerprint="fp")
    a = RetrievalIndex.load(tmp_path / "w")
    np.testing.assert_array_equal(a.vectors[:20], b.vectors[:20])
    np.testing.assert_allclose(a.vectors.astype(np.float32), _unit(x), atol=1e-3)
    assert a.metadata_many(range(50)) == b.metadata_many(range(50)) == _meta(50)
    assert a.info["extra_info"] == {"note": "hi"}
    with pytest.raises(FromageError, match="metadata ran out"):
        RetrievalIndex.build(tmp_path / "c", x, _meta(49), model_fingerprint="fp")
    with pytest.raises(FromageError, match="more metadata"):
        RetrievalIndex.build(tmp_path / "c", x, _meta(51), model_fingerprint="fp")
    assert not (tmp_path / "c").exists()


def test_npy_header_fits_huge_row_counts():
    import io

    h = I._npy_header(np.float16, (10**15, 4096))
    assert len(h) == 128
    f = io.BytesIO(h)
    assert np.lib.format.read_magic(f) == (1, 0)
    assert np.lib.format.read_array_header_1_0(f) == ((10**15, 4096), False, np.dtype("<f2"))


# ------------------------------------------------------------------ search


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(1, 7), k=st.integers(1, 310), chunk=st.sampled_from([29, 128, 1 << 18]),
       per_query=st.booleans())
def test_search_equals_brute_force(index, data, n, k, chunk, per_query):
    """Both paths (fp16 + rescore for n <= 4, fp32 for more), any chunking, with random exclusions."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((n, D)).astype(np.float32)
    if data.draw(st.booleans()):
        q[0] = index.vectors[5]  # a query equal to a duplicated row: exact ties at the top
    ids_st = st.lists(st.integers(0, 299), max_size=data.draw(st.sampled_from([5, 300])))
    if per_query:
        rows = [data.draw(ids_st) for _ in range(n)]
        exclude = rows
    else:
        exclude = data.draw(ids_st)
        rows = [exclude] * n
    with mock.patch.multiple(S, _CHUNK_ROWS=chunk, _FP16_CHUNK_ROWS=chunk, _SUB_ROWS=min(chunk, 16)):
        scores, ids = index.search(q, k=k, exclude=exclude)
    _check_against_reference(index, q, k, rows, scores, ids)


def _near_tie_index(folder):
    """200 rows within ~1e-4 cosine of a query q (fp16 scores cannot order them) plus 300 others."""
    rng = np.random.default_rng(5)
    q = _unit(rng.standard_normal(64))
    x = np.concatenate([_unit(q + 0.01 * rng.standard_normal((200, 64))), rng.standard_normal((300, 64))])
    return RetrievalIndex.build(folder, x, _meta(500), model_fingerprint="x"), q


def test_near_ties_below_fp16_resolution_are_ranked_exactly(tmp_path):
    assert I._fp16_matvec_is_accurate(64)  # else the fp16 path is never taken and this tests nothing
    idx, q = _near_tie_index(tmp_path / "ix")
    for n in (1, 5):  # fp16 + rescore path, fp32 path
        scores, ids = idx.search(np.tile(q, (n, 1)), k=20)
        ref = _reference(idx, np.tile(q, (n, 1)), [[]] * n)
        np.testing.assert_array_equal(ids, np.argsort(-ref, axis=1, kind="stable")[:, :20])
        _check_against_reference(idx, np.tile(q, (n, 1)), 20, [[]] * n, scores, ids)


def test_fp16_candidates_survive_worst_case_score_errors(tmp_path, monkeypatch):
    """Perturb the fp16 scores by about the most error the margin allows for: results stay exact."""
    assert I._fp16_matvec_is_accurate(64)  # checked (and cached) on the real kernel: the fp16 path runs
    idx, q = _near_tie_index(tmp_path / "ix")
    real_mv, gen = torch.mv, torch.Generator().manual_seed(0)

    def noisy_mv(m, v, *, out):
        real_mv(m, v, out=out)
        out.add_((torch.rand(out.shape, generator=gen) * 2 - 1).half() * 6e-4)
        return out

    monkeypatch.setattr(I.torch, "mv", noisy_mv)
    for _ in range(5):
        _, ids = idx.search(q, k=20)
        ref = _reference(idx, q, [[]])
        np.testing.assert_array_equal(ids[0], np.argsort(-ref[0], kind="stable")[:20])


def test_search_inputs_and_exclusion(index):
    q = index.vectors[42].astype(np.float32) * 3.0  # unnormalised; should find row 42 first
    s, i = index.search(torch.from_numpy(q).bfloat16(), k=3)
    assert s.shape == (1, 3) and i[0, 0] == 42 and s[0, 0] == pytest.approx(1.0, abs=1e-2)
    s, i = index.search(q, k=3, exclude=[42])
    assert 42 not in i
    qs = np.stack([index.vectors[42], index.vectors[43]]).astype(np.float32)
    s, i = index.search(qs, k=1, exclude=[[42], []])  # per query: only the first excludes 42
    assert i[0, 0] != 42 and i[1, 0] == 43
    s, i = index.search(qs, k=1, exclude=torch.tensor([42, 43]))
    assert not {42, 43} & set(i.ravel().tolist())
    for n in (1, 6):  # both search paths: only 5 rows are left, the other slots are empty
        s, i = index.search(np.tile(q, (n, 1)), k=10, exclude=range(295))
        assert (np.sort(i[:, :5], axis=1) == [295, 296, 297, 298, 299]).all() and (i[:, 5:] == -1).all()
        assert np.isneginf(s[:, 5:]).all()
    with mock.patch.multiple(S, _CHUNK_ROWS=100, _FP16_CHUNK_ROWS=100, _SUB_ROWS=100):
        s, i = index.search(np.tile(q, (6, 1)), k=150, exclude=range(0, 300, 2))
    assert (i[:, :150] % 2 == 1).all()
    with pytest.raises(FromageError, match="2 per-query lists for 1 queries"):
        index.search(q, exclude=[[1], [2]])
    with pytest.raises(FromageError, match=r"expected \(n, 16\)"):
        index.search(np.ones(8))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same 12 rows as a RetrievalIndex and a TensorIndex, and two queries whose 12 cosines are at
    least 0.008 apart (far above fp16 rounding, so both indexes must rank them alike)."""
    from fromage_mini.infer.tensor_index import TensorIndex

    rng = np.random.default_rng(16)
    x, q = rng.standard_normal((12, D)).astype(np.float32), rng.standard_normal((2, D)).astype(np.float32)
    assert np.diff(np.sort(_unit(q) @ _unit(x).T, axis=1), axis=1).min() > 0.008
    folder = RetrievalIndex.build(tmp_path_factory.mktemp("twin") / "index", x, _meta(12), model_fingerprint="fp")
    return folder, TensorIndex(torch.from_numpy(x), _meta(12)), q


@pytest.mark.parametrize("exclude", [None, [3], [3, 3, 99, -1], range(0, 12, 2), torch.tensor([0, 1]), range(12),
                                     [[0], [1, 2]], np.array([[5], [6]]), [[], list(range(11))]])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_both_indexes_answer_one_search_alike(twins, exclude, k):
    """One interface (infer.tensor_index.ImageIndex): same ids, scores, empty slots (-inf, -1) and k cap."""
    from fromage_mini.infer.tensor_index import ImageIndex

    folder, memory, q = twins
    assert isinstance(folder, ImageIndex) and isinstance(memory, ImageIndex)
    s1, i1 = folder.search(q, k=k, exclude=exclude)
    s2, i2 = memory.search(torch.from_numpy(q), k=k, exclude=exclude)
    assert i1.shape == tuple(i2.shape) == (2, min(k, 12))
    np.testing.assert_array_equal(i1, i2.numpy())
    np.testing.assert_allclose(s1, s2.numpy(), atol=2e-3)  # fp16 rows on disk, fp32 in memory
    assert (np.isneginf(s1) == (i1 == -1)).all() and (np.isneginf(s2.numpy()) == (i1 == -1)).all()
    assert [folder.metadata(i) for i in i1[0] if i >= 0] == [memory.metadata(i) for i in i2[0] if i >= 0]


def test_both_indexes_refuse_k_below_one_and_give_an_empty_index_no_columns(twins, tmp_path):
    from fromage_mini.infer.tensor_index import TensorIndex

    folder, memory, q = twins
    for k in (0, -1, True):
        for index in (folder, memory):
            with pytest.raises(FromageError, match=f"k must be at least 1 \\(results per query\\), got {k}"):
                index.search(q, k=k)
    empty = RetrievalIndex.build(tmp_path / "empty", np.zeros((0, D), np.float32), [], model_fingerprint="fp")
    for index in (empty, TensorIndex(torch.zeros(0, D))):
        s, i = index.search(q, k=0)
        assert tuple(s.shape) == tuple(i.shape) == (2, 0)


# ------------------------------------------------------------------ safety of loading


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_fingerprint_mismatch_is_one_clear_line(index):
    with pytest.raises(FromageError) as e:
        RetrievalIndex.load(index.folder, expected_fingerprint="fp-B")
    msg = _one_line_error(e)
    assert str(index.folder) in msg and "another model" in msg and "fromage-mini index build" in msg


def _copy_index(index, dest):
    import shutil

    shutil.copytree(index.folder, dest)
    return dest


@pytest.mark.parametrize("damage, name", [
    (lambda p: p.joinpath("index.json").unlink(), "index.json"),
    (lambda p: p.joinpath("index.json").write_text("{not json"), "index.json"),
    (lambda p: p.joinpath("index.json").write_text('{"format": "fromage-mini-index"}'), "index.json"),
    (lambda p: p.joinpath("vectors.npy").unlink(), "vectors.npy"),
    (lambda p: _truncate(p / "vectors.npy", 1000), "vectors.npy"),
    (lambda p: _truncate(p / "vectors.npy", 60), "vectors.npy"),  # inside the header
    (lambda p: p.joinpath("vectors.npy").write_bytes(b"garbage" * 100), "vectors.npy"),
    (lambda p: _truncate(p / "metadata_offsets.npy", 200), "metadata_offsets.npy"),
    (lambda p: _truncate(p / "metadata.jsonl", 10), "metadata.jsonl"),
    (lambda p: p.joinpath("metadata.jsonl").unlink(), "metadata.jsonl"),
])
def test_missing_or_corrupt_files_raise_one_line_errors(index, tmp_path, damage, name):
    folder = _copy_index(index, tmp_path / "copy")
    damage(folder)
    with pytest.raises(FromageError) as e:
        RetrievalIndex.load(folder)
    assert name in _one_line_error(e)


def _truncate(path, nbytes):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - nbytes)


def test_missing_folder(tmp_path):
    with pytest.raises(FromageError, match="folder not found"):
        RetrievalIndex.load(tmp_path / "nope")


# ------------------------------------------------------------------ safety of writing


def _rows_then_crash(x, crash_after):
    for r in range(len(x)):
        if r == crash_after:
            raise RuntimeError("simulated crash")
        yield x[r]


def test_interrupted_build_leaves_no_index_and_keeps_previous(tmp_path):
    rng = np.random.default_rng(2)
    old_x, new_x = rng.standard_normal((2, 40, D)).astype(np.float32)
    folder = tmp_path / "ix"
    with pytest.raises(RuntimeError, match="simulated"):  # first build dies: nothing appears
        RetrievalIndex.build(folder, _rows_then_crash(new_x, 25), iter(_meta(40)), model_fingerprint="x", dim=D)
    assert not folder.exists()
    with pytest.raises(FromageError):
        RetrievalIndex.load(folder)

    RetrievalIndex.build(folder, old_x, _meta(40), model_fingerprint="old")
    with pytest.raises(RuntimeError, match="simulated"):  # a rebuild dies: the old index is intact
        RetrievalIndex.build(folder, _rows_then_crash(new_x, 25), iter(_meta(40)), model_fingerprint="new", dim=D)
    w = IndexWriter(folder, dim=D, model_fingerprint="new")  # a "killed" writer: never closed
    w.add(new_x, _meta(40))
    old = RetrievalIndex.load(folder, expected_fingerprint="old")
    np.testing.assert_allclose(old.vectors.astype(np.float32), _unit(old_x), atol=1e-3)
    assert old.metadata(39) == _meta(1, 39)[0]
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temporary folders left behind

    RetrievalIndex.build(folder, new_x, _meta(40), model_fingerprint="new")  # a complete rebuild replaces
    assert RetrievalIndex.load(folder, expected_fingerprint="new").info["num_rows"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_loaded_index_is_a_snapshot_across_rebuilds(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 30, D)).astype(np.float32)
    old = RetrievalIndex.build(tmp_path / "ix", x, _meta(30), model_fingerprint="old")
    new = RetrievalIndex.build(tmp_path / "ix", y[:20], _meta(20, 100), model_fingerprint="new")
    assert old.metadata(25) == _meta(1, 25)[0] and new.metadata(0) == _meta(1, 100)[0]
    assert old.search(x[25], k=1)[1][0, 0] == 25 and len(new) == 20
    old.close()
    new.close()


def test_refuses_to_replace_a_folder_of_other_files(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(FromageError, match="cat.jpg"):
        RetrievalIndex.build(tmp_path / "photos", np.ones((1, D)), _meta(1), model_fingerprint="x")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"jpeg"


# ------------------------------------------------------------------ released pickle


def _write_released_pickles(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 256)).astype(np.float32)
    b = torch.randn(4, 256, dtype=torch.bfloat16)
    p1, p2 = tmp_path / "cc3m_embeddings_0.pkl", tmp_path / "cc3m_embeddings_1.pkl"
    with open(p1, "wb") as f:  # numpy-array form
        pickle.dump({"paths": [f"https://example.com/{i}.jpg" for i in range(6)], "embeddings": a}, f)
    with open(p2, "wb") as f:  # list of 1-D bf16 tensors, as in the release
        pickle.dump({"paths": [f"https://example.com/{i}.jpg" for i in range(6, 10)], "embeddings": list(b)}, f)
    return [p1, p2], np.concatenate([a, b.float().numpy()])


def test_released_pickle_refused_without_trust(tmp_path):
    paths, _ = _write_released_pickles(tmp_path)
    with pytest.raises(FromageError) as e:
        RetrievalIndex.from_released_pickle(paths[0], tmp_path / "out")
    msg = _one_line_error(e)
    assert "arbitrary code" in msg and "trust_pickle=True" in msg
    assert not (tmp_path / "out").exists()


def test_released_pickle_converted_when_trusted(tmp_path):
    paths, x = _write_released_pickles(tmp_path)
    with pytest.warns(UserWarning, match="arbitrary code"):
        idx = RetrievalIndex.from_released_pickle(paths, tmp_path / "out", trust_pickle=True)
    assert len(idx) == 10 and idx.dim == 256
    assert idx.model_fingerprint == I.RELEASED_FROMAGE_FINGERPRINT
    np.testing.assert_allclose(idx.vectors.astype(np.float32), _unit(x), atol=1e-3)
    assert idx.metadata(7) == {"url": "https://example.com/7.jpg"}
    _, ids = idx.search(x[7], k=1)
    assert ids[0, 0] == 7
    with pytest.warns(UserWarning):  # single file, numpy form only
        one = RetrievalIndex.from_released_pickle(paths[1], tmp_path / "one", trust_pickle=True)
    assert len(one) == 4 and one.metadata(0) == {"url": "https://example.com/6.jpg"}


def test_pickle_is_only_used_on_the_marked_line():
    import inspect

    import fromage_mini.retrieval.released as R

    src = inspect.getsource(R).splitlines()
    uses = [line for line in src if "pickle.load" in line]
    assert len(uses) == 1 and "# unsafe-load-ok: explicit trust flag" in uses[0]
