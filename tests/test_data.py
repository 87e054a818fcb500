import functools
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bertpooled.data.imdb
from bertpooled.data.imdb import (
    ENV_VAR,
    Imdb,
    Split,
    cache_dir,
    check_source,
    download_imdb,
    load_imdb,
    resolve_source,
)
from bertpooled.data.subsets import balanced_subset
from bertpooled.errors import BertpooledError

REVIEWS = {
    "train/pos/0_9.txt": "Great film.<br /><br />Loved it.",
    "train/pos/10_7.txt": "Good \u00e9t\u00e9 fun \u2014 ok",
    "train/pos/2_8.txt": "Nice.",
    "train/neg/1_2.txt": "Awful.",
    "train/neg/3_1.txt": "Boring and long.",
    "test/pos/5_10.txt": "Masterpiece!",
    "test/neg/4_3.txt": "Meh.",
    "test/neg/6_4.txt": "  Not great, not terrible.\n",
}
EXTRAS = {
    "train/unsup/7_0.txt": "unlabeled review",
    "train/labeledBow.feat": "9 0:1 1:2\n",
    "imdb.vocab": "the\nand\n",
    "train/urls_pos.txt": "http://www.imdb.com/title/tt0000001/usercomments\n",
    "README": "readme",
}


def write_tree(root: Path, files: dict) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def write_archive(path: Path, files: dict, top: str = "aclImdb", mode: str = "w:gz") -> Path:
    # reversed insertion order, so a loader that kept tar order would come out unsorted
    with tarfile.open(path, mode) as tar:
        for rel, content in reversed(list(files.items())):
            data = content if isinstance(content, bytes) else content.encode("utf-8")
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path):
    return write_archive(tmp_path / "aclImdb_v1.tar.gz", {**REVIEWS, **EXTRAS})


@pytest.fixture
def folder(tmp_path):
    return write_tree(tmp_path / "extracted" / "aclImdb", {**REVIEWS, **EXTRAS})


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("BERTPOOLED_CACHE", raising=False)


def assert_one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def expected_digest(files: dict) -> str:
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for rel in sorted((r for r in files if r.startswith(split + "/")), key=lambda r: r[:-4]):
            label = 1 if "/pos/" in rel else 0
            digest.update(f"{rel[:-4]}\0{label}\0".encode() + files[rel].encode("utf-8") + b"\0")
    return digest.hexdigest()


def test_archive_reads_the_labeled_reviews_sorted_by_id(archive):
    imdb = load_imdb(str(archive))
    assert isinstance(imdb, Imdb) and isinstance(imdb.train, Split)
    assert imdb.train.ids == ["train/neg/1_2", "train/neg/3_1", "train/pos/0_9", "train/pos/10_7", "train/pos/2_8"]
    assert imdb.test.ids == ["test/neg/4_3", "test/neg/6_4", "test/pos/5_10"]
    assert imdb.train.labels.dtype == np.int64
    assert imdb.train.labels.tolist() == [0, 0, 1, 1, 1]
    assert imdb.test.labels.tolist() == [0, 0, 1]
    assert imdb.train.texts[2] == REVIEWS["train/pos/0_9.txt"]  # <br /> kept as is
    assert imdb.test.texts[1] == REVIEWS["test/neg/6_4.txt"]  # whitespace kept as is
    assert imdb.source == str(archive.resolve())
    assert len(imdb.train) == 5 and len(imdb.test) == 3


def test_archive_and_folder_give_the_same_digest(archive, folder):
    from_archive = load_imdb(str(archive))
    for path in (folder, folder.parent):  # the aclImdb folder itself, and its parent
        from_folder = load_imdb(str(path))
        assert from_folder.digest == from_archive.digest
        assert from_folder.source == str(path.resolve())
        for name in ("train", "test"):
            a, b = getattr(from_archive, name), getattr(from_folder, name)
            assert a.ids == b.ids and a.texts == b.texts
            assert np.array_equal(a.labels, b.labels)


def test_digest_is_sha256_over_id_label_text_in_canonical_order(archive):
    assert load_imdb(str(archive)).digest == expected_digest(REVIEWS)


def test_digest_changes_when_one_review_changes(tmp_path):
    first = load_imdb(str(write_archive(tmp_path / "a.tar.gz", REVIEWS)))
    second = load_imdb(str(write_archive(tmp_path / "b.tar.gz", {**REVIEWS, "test/pos/5_10.txt": "Masterpiece?"})))
    assert first.digest != second.digest


def test_unsup_and_extra_files_are_ignored(tmp_path):
    plain = load_imdb(str(write_archive(tmp_path / "plain.tar.gz", REVIEWS)))
    extra = load_imdb(
        str(write_archive(tmp_path / "extra.tar.gz", {**REVIEWS, **EXTRAS, "train/pos/._0_9.txt": b"\xff"}))
    )
    assert extra.digest == plain.digest
    assert not any("unsup" in i for i in extra.train.ids)


def test_archive_with_another_top_folder_or_none_and_plain_tar_is_read(tmp_path):
    want = expected_digest(REVIEWS)
    assert load_imdb(str(write_archive(tmp_path / "x.tgz", REVIEWS, top="some/where"))).digest == want
    assert load_imdb(str(write_archive(tmp_path / "y.tar.gz", REVIEWS, top=""))).digest == want
    assert load_imdb(str(write_archive(tmp_path / "z.tar", REVIEWS, mode="w"))).digest == want


@pytest.fixture
def parsed_cache(tmp_path, monkeypatch):
    # tiny archives are below the size worth caching; pretend they are big
    monkeypatch.setattr(bertpooled.data.imdb, "_PARSED_MIN_BYTES", 0)
    return tmp_path / "cache"


def fail_on_read(monkeypatch):
    def no_read(*args):
        raise AssertionError("archive read again")

    monkeypatch.setattr(bertpooled.data.imdb, "_read_archive", no_read)


def test_second_load_of_a_big_archive_comes_from_the_parsed_cache(archive, parsed_cache, monkeypatch):
    first = load_imdb(str(archive), cache_dir=parsed_cache)
    assert len(list((parsed_cache / "parsed").glob("imdb-*.bin"))) == 1
    fail_on_read(monkeypatch)
    again = load_imdb(str(archive), cache_dir=parsed_cache)
    assert again.digest == first.digest and again.source == first.source
    for name in ("train", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert a.ids == b.ids and a.texts == b.texts and np.array_equal(a.labels, b.labels)
        assert b.labels.dtype == np.int64


def test_a_changed_archive_is_read_again_and_its_old_cache_dropped(archive, parsed_cache):
    first = load_imdb(str(archive), cache_dir=parsed_cache)
    (old,) = (parsed_cache / "parsed").glob("imdb-*.bin")
    old.with_suffix(".json").write_text("{}")  # an earlier cache format of the same archive
    write_archive(archive, {**REVIEWS, "test/pos/5_10.txt": "Changed."})
    os.utime(archive, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    second = load_imdb(str(archive), cache_dir=parsed_cache)
    assert second.digest != first.digest and second.test.texts[-1] == "Changed."
    assert len(list((parsed_cache / "parsed").glob("imdb-*"))) == 1


def test_a_damaged_or_unwritable_parsed_cache_only_costs_speed(archive, parsed_cache, tmp_path):
    want = load_imdb(str(archive), cache_dir=parsed_cache)
    (cached,) = (parsed_cache / "parsed").glob("imdb-*.bin")
    good = cached.read_bytes()
    for damaged in (b'{"train": [1, 2', good[:-3], good.replace(b"\n", b"\n\xff", 1), good[:-4] + b"\xff" * 4, b""):
        cached.write_bytes(damaged)
        got = load_imdb(str(archive), cache_dir=parsed_cache)
        assert got.digest == want.digest and got.test.texts == want.test.texts
        assert cached.read_bytes() == good  # rewritten
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert load_imdb(str(archive), cache_dir=blocked).digest == want.digest


def test_small_archives_are_not_cached(archive, tmp_path):
    load_imdb(str(archive), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_split_take_and_to_frame_keep_rows_aligned(archive):
    train = load_imdb(str(archive)).train
    part = train.take(np.array([4, 0, 2]))
    assert part.ids == ["train/pos/2_8", "train/neg/1_2", "train/pos/0_9"]
    assert part.texts == [REVIEWS["train/pos/2_8.txt"], REVIEWS["train/neg/1_2.txt"], REVIEWS["train/pos/0_9.txt"]]
    assert part.labels.tolist() == [1, 0, 1]
    frame = part.to_frame()
    assert list(frame.columns) == ["id", "text", "label"]
    assert frame["id"].tolist() == part.ids and frame["label"].tolist() == [1, 0, 1]


def test_non_utf8_review_is_an_error_naming_the_member(tmp_path):
    bad = {**REVIEWS, "test/neg/4_3.txt": "caf\u00e9".encode("latin-1")}
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_archive(tmp_path / "bad.tar.gz", bad)))
    assert_one_line_error(excinfo, "test/neg/4_3.txt", "UTF-8", "corrupt", "aclImdb_v1.tar.gz")
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_tree(tmp_path / "dir", bad)))
    assert_one_line_error(excinfo, "4_3.txt", "UTF-8", "corrupt")


@pytest.mark.parametrize("text", ["", "  \n\t "])
def test_empty_review_is_an_error_naming_the_member(tmp_path, text):
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_archive(tmp_path / "empty.tar.gz", {**REVIEWS, "train/pos/2_8.txt": text})))
    assert_one_line_error(excinfo, "train/pos/2_8.txt", "empty")


def test_folder_without_a_label_subfolder_names_what_is_missing(tmp_path):
    files = {k: v for k, v in REVIEWS.items() if not k.startswith("test/pos/")}
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_tree(tmp_path / "aclImdb", files)))
    assert_one_line_error(excinfo, "test/pos/", "--data", ENV_VAR)
    assert "train/neg/" not in str(excinfo.value)


def test_folder_that_is_not_imdb_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(tmp_path / "empty"))
    assert_one_line_error(excinfo, "train/pos/", "test/neg/", "aclImdb")


def test_archive_without_a_label_is_an_error(tmp_path):
    files = {k: v for k, v in REVIEWS.items() if not k.startswith("train/neg/")}
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_archive(tmp_path / "half.tar.gz", files)))
    assert_one_line_error(excinfo, "train/neg/", "no reviews")


def test_archive_with_no_reviews_is_an_error(tmp_path):
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(write_archive(tmp_path / "none.tar.gz", EXTRAS)))
    assert_one_line_error(excinfo, "no IMDB reviews", "aclImdb_v1.tar.gz")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_archive_is_an_error(tmp_path, archive, keep):
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(cut))
    assert_one_line_error(excinfo, "corrupt or truncated", "re-download", str(cut))


def test_plain_tar_cut_at_a_member_boundary_or_inside_a_member_is_an_error(tmp_path):
    whole = write_archive(tmp_path / "whole.tar", REVIEWS, mode="w").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        members = tar.getmembers()
    boundary = members[-1].offset  # everything before the last member's header
    inside = members[-1].offset_data + 2  # inside the last member's text
    for name, cut_at in (("boundary.tar", boundary), ("inside.tar", inside)):
        cut = tmp_path / name
        cut.write_bytes(whole[:cut_at])
        with pytest.raises(BertpooledError) as excinfo:
            load_imdb(str(cut))
        assert_one_line_error(excinfo, "corrupt or truncated", name)


def test_garbage_archive_is_an_error(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    with pytest.raises(BertpooledError) as excinfo:
        load_imdb(str(junk))
    assert_one_line_error(excinfo, "corrupt or truncated")


def test_nonexistent_path_is_an_error_before_and_at_load(tmp_path):
    missing = str(tmp_path / "nope.tar.gz")
    for call in (check_source, load_imdb):
        with pytest.raises(BertpooledError) as excinfo:
            call(missing)
        assert_one_line_error(excinfo, missing, "does not exist", "--data", ENV_VAR)


def test_check_source_accepts_archives_and_folders_and_rejects_other_files(tmp_path, archive, folder):
    check_source(str(archive))
    check_source(str(folder))
    check_source(None)  # nothing given: a download, nothing to check
    other = tmp_path / "reviews.csv"
    other.write_text("x")
    with pytest.raises(BertpooledError) as excinfo:
        check_source(str(other))
    assert_one_line_error(excinfo, "reviews.csv", ".tar.gz")


def test_check_source_checks_the_env_var_path(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(BertpooledError):
        check_source(None)


def test_resolve_source_uses_the_env_var_and_the_argument_wins(monkeypatch):
    assert resolve_source(None) is None
    monkeypatch.setenv(ENV_VAR, "")
    assert resolve_source(None) is None
    monkeypatch.setenv(ENV_VAR, "/from/env.tar.gz")
    assert resolve_source(None) == "/from/env.tar.gz"
    assert resolve_source("/from/arg") == "/from/arg"


def test_load_imdb_reads_the_env_var_path(monkeypatch, archive):
    monkeypatch.setenv(ENV_VAR, str(archive))
    assert load_imdb().digest == expected_digest(REVIEWS)


def test_cache_dir_honours_bertpooled_cache_and_does_not_create_it(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTPOOLED_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert not (tmp_path / "c").exists()
    monkeypatch.delenv("BERTPOOLED_CACHE")
    assert cache_dir().name == "bertpooled"


def test_balanced_subset_fraction_takes_the_floor_of_each_label():
    labels = np.repeat(np.array([1, 0]), 12_500)
    idx = balanced_subset(labels, fraction=0.75, seed=0)
    assert len(idx) == 18_750 and idx.dtype == np.int64
    assert (labels[idx] == 1).sum() == 9_375 and (labels[idx] == 0).sum() == 9_375
    assert np.all(np.diff(idx) > 0)
    hundred = np.repeat(np.array([0, 1]), 100)
    assert (hundred[balanced_subset(hundred, fraction=0.29)] == 0).sum() == 29  # not 28 from 28.999...


def test_balanced_subset_is_deterministic_per_seed():
    labels = np.tile(np.array([0, 1]), 500)
    a = balanced_subset(labels, fraction=0.5, seed=3)
    assert np.array_equal(a, balanced_subset(labels, fraction=0.5, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, fraction=0.5, seed=4))


@pytest.mark.parametrize("n, pos, neg", [(10, 5, 5), (11, 6, 5), (1, 1, 0), (1000, 30, 40)])
def test_balanced_subset_n_splits_evenly_with_the_odd_row_a_positive(n, pos, neg):
    labels = np.array([0] * 40 + [1] * 30)
    idx = balanced_subset(labels, n=n, seed=1)
    assert (labels[idx] == 1).sum() == pos and (labels[idx] == 0).sum() == neg
    assert np.all(np.diff(idx) > 0)


def test_balanced_subset_applies_fraction_then_n_and_smaller_n_is_nested():
    labels = np.repeat(np.array([0, 1]), 100)
    both = balanced_subset(labels, fraction=0.1, n=1000, seed=2)
    assert np.array_equal(both, balanced_subset(labels, fraction=0.1, seed=2))
    small = balanced_subset(labels, fraction=0.5, n=8, seed=2)
    assert len(small) == 8 and set(small) <= set(balanced_subset(labels, fraction=0.5, seed=2))
    assert set(balanced_subset(labels, n=6, seed=2)) <= set(balanced_subset(labels, n=20, seed=2))


@pytest.mark.parametrize("kwargs", [{"fraction": 0}, {"fraction": 1.5}, {"n": 0}, {"n": 2.5}])
def test_balanced_subset_rejects_bad_sizes(kwargs):
    with pytest.raises(BertpooledError) as excinfo:
        balanced_subset(np.array([0, 1]), **kwargs)
    assert_one_line_error(excinfo, "must be")


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def md5_of(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def test_download_with_the_right_md5_then_loads(http_server, tmp_path):
    served, base = http_server
    tiny = write_archive(served / "aclImdb_v1.tar.gz", {**REVIEWS, **EXTRAS})
    cache = tmp_path / "cache"
    path = download_imdb(f"{base}/aclImdb_v1.tar.gz", md5_of(tiny), cache_dir=cache, progress=False)
    assert path.parent == cache and path.read_bytes() == tiny.read_bytes()
    assert load_imdb(str(path)).digest == expected_digest(REVIEWS)
    # second call is served from the cache, even with the server's file gone
    tiny.unlink()
    assert download_imdb(f"{base}/aclImdb_v1.tar.gz", md5_of(path), cache_dir=cache, progress=False) == path


def test_download_with_a_wrong_md5_is_an_error_and_keeps_nothing(http_server, tmp_path):
    served, base = http_server
    write_archive(served / "aclImdb_v1.tar.gz", REVIEWS)
    cache = tmp_path / "cache"
    with pytest.raises(BertpooledError) as excinfo:
        download_imdb(f"{base}/aclImdb_v1.tar.gz", "md5:" + "0" * 32, cache_dir=cache, progress=False)
    assert_one_line_error(excinfo, "checksum", "not kept", ENV_VAR)
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_download_of_a_missing_file_is_an_error(http_server, tmp_path):
    _, base = http_server
    with pytest.raises(BertpooledError) as excinfo:
        download_imdb(f"{base}/nothing.tar.gz", "md5:" + "0" * 32, cache_dir=tmp_path, progress=False)
    assert_one_line_error(excinfo, "cannot download IMDB", "404", ENV_VAR, "--data")


def test_unreachable_url_is_a_quick_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    start = time.monotonic()
    with pytest.raises(BertpooledError) as excinfo:
        download_imdb(url, "md5:" + "0" * 32, cache_dir=tmp_path, progress=False)
    assert time.monotonic() - start < 10
    assert_one_line_error(excinfo, "cannot download IMDB", url, "offline?", ENV_VAR, "--data")
