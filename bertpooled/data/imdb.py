"""The IMDB sentiment data (Maas et al., 2011): find it, download it, read it, subsample it."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bertpooled import files
from bertpooled.errors import BertpooledError, redact_uri

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ENV_VAR = "BERTPOOLED_IMDB"
CACHE_ENV_VAR = "BERTPOOLED_CACHE"

SPLITS = ("train", "test")
LABELS = ("neg", "pos")  # index = label value
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
# Wherever the top folder is; AppleDouble/hidden files ("._0_9.txt") are not reviews.
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/([^/.][^/]*)\.txt$")
UNSUP = "unsup"  # train/unsup/: the official archive's 50,000 unlabelled reviews (label -1 here)
# Reading the official 84 MB archive in place takes several seconds (tarfile parses ~100k headers);
# smaller archives (tests, samples) read fast enough that caching them would only litter the cache.
_PARSED_MIN_BYTES = 8 << 20
_PARSED_VERSION = 2  # 2: train/unsup kept
_FIX = "point --data or BERTPOOLED_IMDB at the official aclImdb_v1.tar.gz or its extracted aclImdb/ folder"


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays field-wise would raise
class Split:
    """One split of the data: review ids ("train/pos/1234_8"), raw texts and 0/1 labels, sorted by id."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> Split:
        """The rows at ``idx``, in that order."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        return Split([self.ids[i] for i in idx], [self.texts[i] for i in idx], self.labels[idx])

    def to_frame(self):
        """A pandas DataFrame with columns id, text, label."""
        import pandas as pd  # only callers that want a frame pay pandas' import time

        return pd.DataFrame({"id": self.ids, "text": self.texts, "label": self.labels})


@dataclass(frozen=True)
class Imdb:
    """Both splits, where they came from, and a sha256 of their content in canonical order."""

    train: Split
    test: Split
    source: str
    digest: str
    """sha256 over the labelled train and test reviews (`train/unsup` is not part of it: a run that reads no
    unlabelled review logs the digest it always had)."""
    unsup: Split | None = None
    """`train/unsup`'s unlabelled reviews (labels -1), where the data has them."""
    unsup_digest: str = ""


def resolve_source(data: str | None) -> str | None:
    """``data`` if given, else $BERTPOOLED_IMDB if set and non-empty, else None (meaning: download)."""
    if data is not None and str(data) != "":
        return str(data)
    return os.environ.get(ENV_VAR) or None


def check_source(data: str | None) -> None:
    """Cheaply check that the resolved source exists and is an archive file or a folder (no full read)."""
    src = resolve_source(data)
    if src is None:
        return
    path = Path(src).expanduser()
    if not path.exists():
        raise BertpooledError(f"IMDB data {_shown(src)} does not exist: {_FIX}")
    if path.is_dir():
        return
    if not path.is_file() or not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BertpooledError(f"IMDB data {_shown(src)} is neither a folder nor a .tar.gz/.tgz/.tar archive: {_FIX}")


def _shown(src: str) -> str:
    """`src` as an error line may show it: a URI's `user:password@` removed."""

    return redact_uri(src)


def cache_dir() -> Path:
    """$BERTPOOLED_CACHE if set, else the user cache folder for bertpooled; not created here."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("bertpooled"))


_default_cache_dir = cache_dir  # download_imdb's `cache_dir` argument shadows the function


def download_imdb(
    url: str = IMDB_URL,
    known_hash: str = "md5:" + IMDB_MD5,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> Path:
    """Download the archive into the cache folder (once), check its hash, and return its path."""
    import pooch
    import requests

    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    try:
        return Path(
            pooch.retrieve(
                url, known_hash, path=folder, progressbar=sys.stderr.isatty() if progress is None else bool(progress)
            )
        )
    except requests.exceptions.RequestException as e:
        raise BertpooledError(
            f"cannot download IMDB from {url} ({_one_line(e)}); offline? set {ENV_VAR}=/path/to/aclImdb_v1.tar.gz"
            " (or an extracted aclImdb/ folder) or pass --data"
        ) from e
    except ValueError as e:
        if "does not match the known hash" not in str(e):
            raise
        raise BertpooledError(
            f"IMDB download from {url} does not match its checksum {known_hash} (bad or partial file, not kept):"
            f" retry later, or download it yourself and set {ENV_VAR}=/path/to/aclImdb_v1.tar.gz"
        ) from e
    except OSError as e:
        raise BertpooledError(
            f"cannot save the IMDB download into {folder} ({_one_line(e)}): set {CACHE_ENV_VAR} to a writable folder"
        ) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def load_imdb(data: str | None = None, *, cache_dir: str | Path | None = None, progress: bool | None = None) -> Imdb:
    """Read IMDB from an archive (in place), an extracted folder, $BERTPOOLED_IMDB, or a download."""
    src = resolve_source(data)
    if src is None:
        path, source = download_imdb(cache_dir=cache_dir, progress=progress), IMDB_URL
    else:
        check_source(src)
        path = Path(src).expanduser().resolve()
        source = str(path)
    if path.is_dir():
        return _assemble(_read_folder(path, progress), source, path)
    parsed = None
    if path.stat().st_size >= _PARSED_MIN_BYTES:
        parsed = _parsed_file(path, Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir())
        imdb = _load_parsed(parsed, source)
        if imdb is not None:
            return imdb
    imdb = _assemble(_read_archive(path, progress), source, path)
    if parsed is not None:
        _save_parsed(parsed, imdb)
    return imdb


def _parsed_file(archive: Path, folder: Path) -> Path:
    # keyed by (absolute path, size, mtime): a replaced or touched archive gets read again
    stat = archive.stat()
    where = hashlib.sha256(str(archive).encode()).hexdigest()[:16]
    what = hashlib.sha256(f"{_PARSED_VERSION}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return folder / "parsed" / f"imdb-{where}-{what}.bin"


def _load_parsed(file: Path, source: str) -> Imdb | None:
    try:
        with open(file, "rb") as f:
            head, blob = json.loads(f.readline()), memoryview(f.read())
        ends = list(itertools.accumulate(head["sizes"]))
        if head["version"] != _PARSED_VERSION or (ends[-1] if ends else 0) != len(blob):
            return None
        raws = [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        texts = [str(raw, "utf-8") for raw in raws]
        n, m = len(head["train"]), len(head["train"]) + len(head["test"])
        train, test = (
            Split(head[s], t, _labels(head[s], s)) for s, t in zip(SPLITS, (texts[:n], texts[n:m]), strict=True)
        )
        unsup = Split(head["unsup"], texts[m:], _labels(head["unsup"], "train")) if head["unsup"] else None
        # The digest the run logs as data/digest is recomputed from the bytes read here, not trusted from the
        # header: an altered entry would otherwise train on other text under the original's digest.
        digest = _digest_of(Split(train.ids + test.ids, [], np.concatenate([train.labels, test.labels])), raws[:m])
        unsup_digest = _digest_of(unsup, raws[m:]) if unsup is not None else ""
        if (
            digest != head["digest"]
            or unsup_digest != head["unsup_digest"]
            or sorted(head["train"]) != head["train"]
            or sorted(head["test"]) != head["test"]
        ):
            print(
                f"warning: parsed IMDB cache {file} does not match its digest: reading the archive again and "
                "replacing it",
                file=sys.stderr,
            )
            return None
        return Imdb(train, test, source, digest, unsup, unsup_digest)
    except FileNotFoundError:
        return None  # no cache yet
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(
            f"warning: parsed IMDB cache {file} is damaged ({type(exc).__name__}): reading the archive again and "
            "replacing it",
            file=sys.stderr,
        )
        return None


def _save_parsed(file: Path, imdb: Imdb) -> None:
    # One JSON header line (ids, byte sizes, digest), then every text's UTF-8 bytes back to back:
    # 10x faster to write and read than a JSON list of 50,000 texts, and no pickle.
    unsup = imdb.unsup or Split([], [], np.zeros(0, dtype=np.int64))
    raw = [t.encode("utf-8") for t in imdb.train.texts + imdb.test.texts + unsup.texts]
    head = {
        "version": _PARSED_VERSION,
        "digest": imdb.digest,
        "unsup_digest": imdb.unsup_digest,
        "train": imdb.train.ids,
        "test": imdb.test.ids,
        "unsup": unsup.ids,
        "sizes": [len(r) for r in raw],
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with files.replacing(file) as tmp, open(tmp, "wb") as f:  # a concurrent or killed run never sees half a file
            f.write(json.dumps(head).encode("ascii") + b"\n")
            f.write(b"".join(raw))
        for stale in file.parent.glob(file.name.rsplit("-", 1)[0] + "-*"):
            if stale != file and not stale.name.endswith(".tmp"):  # older versions of the same archive
                stale.unlink(missing_ok=True)
    except OSError:  # a read-only or full cache only costs speed (the temporary file is gone with its error)
        pass


def _labels(ids: list[str], split: str) -> np.ndarray:
    """1 for pos, 0 for neg, -1 for an unlabelled (`train/unsup/`) review."""
    return np.fromiter(
        (1 if rid.startswith(f"{split}/pos/") else -1 if rid.startswith(f"{split}/{UNSUP}/") else 0 for rid in ids),
        dtype=np.int64,
        count=len(ids),
    )


def _digest_of(split: Split, raws) -> str:
    """sha256 of a split's ids, labels and bytes in order (the canonical form of `Imdb.digest`)."""
    digest = hashlib.sha256()
    for rid, label, raw in zip(split.ids, split.labels, raws, strict=True):
        digest.update(f"{rid}\0{label}\0".encode())
        digest.update(raw)
        digest.update(b"\0")
    return digest.hexdigest()


# (split, label) -> {id: (text, utf-8 bytes)}; bytes kept so the digest needs no re-encoding.
_Found = dict[tuple[str, str], dict[str, tuple[str, bytes]]]


def _add(found: _Found, split: str, label: str, stem: str, raw: bytes, where: str) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BertpooledError(
            f"IMDB review {where} is not UTF-8 ({e.reason} at byte {e.start}), so the data looks corrupt or"
            f" modified: re-download it or {_FIX}"
        ) from e
    if not text.strip():
        raise BertpooledError(
            f"IMDB review {where} is empty, so the data looks corrupt or modified: re-download it or {_FIX}"
        )
    rows = found.setdefault((split, label), {})
    rid = f"{split}/{label}/{stem}"
    if rid in rows:
        raise BertpooledError(f"IMDB review {rid} appears twice (again at {where}): {_FIX}, which holds one copy")
    rows[rid] = (text, raw)


def _bar(total: int, unit: str, desc: str, progress: bool | None):
    # disable=None: tqdm shows the bar on a TTY only; delay: quick reads print nothing at all
    disable = None if progress is None else not progress
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, disable=disable, delay=1.0, leave=False)


# IMDB's longest review is about 14 KB and all 100,000 hold about 130 MB: a member past these caps is refused
# before it is read (a 14 MB tar.gz holding one 3 GiB review was read whole into memory).
MAX_REVIEW_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024**3


def _check_size(size: int, total: int, where: str) -> None:
    """A review's declared size within the per-review cap, and all read so far within the total one."""
    if size > MAX_REVIEW_BYTES:
        raise BertpooledError(
            f"IMDB review {where} holds {size:,} bytes, over the {MAX_REVIEW_BYTES // 1024:,} KiB a review may have "
            f"(the longest real one has about 14 KB): it is not IMDB data; re-download it or {_FIX}"
        )
    if total + size > MAX_TOTAL_BYTES:
        raise BertpooledError(
            f"IMDB data at {where} goes past {MAX_TOTAL_BYTES // 1024**3} GiB of reviews (the real set holds about "
            f"130 MB): it is not IMDB data; re-download it or {_FIX}"
        )


def _read_archive(path: Path, progress: bool | None) -> _Found:
    found: _Found = {}
    total = 0
    try:
        # One forward pass through the compressed bytes, nothing extracted to disk.
        with (
            open(path, "rb") as raw,
            tarfile.open(fileobj=raw, mode="r:*") as tar,
            _bar(path.stat().st_size, "B", "reading IMDB", progress) as bar,
        ):
            for i, member in enumerate(tar):
                match = _MEMBER.search(member.name)
                if match is None or not member.isfile():
                    continue
                _check_size(member.size, total, f"{member.name} in {path}")  # from its header, before reading
                file = tar.extractfile(member)
                assert file is not None  # a regular file (checked above)
                data = file.read(MAX_REVIEW_BYTES + 1)
                total += len(data)
                if len(data) != member.size:
                    raise EOFError(f"{member.name} ends early")
                split, label, stem = match.groups()
                if label == UNSUP and split != "train":
                    continue  # only train/ has unlabelled reviews
                _add(found, split, label, stem, data, where=f"{member.name} in {path}")
                if i % 512 == 0:
                    bar.update(raw.tell() - bar.n)
            # tarfile takes a cut-off header for the end of the archive; reading to the end makes the
            # decompressor check its end marker and CRC, and a plain .tar must still hold its end block.
            while tar.fileobj.read(1 << 20):
                pass
            if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
                raise EOFError("no end-of-archive block")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BertpooledError(
            f"IMDB archive {path} is corrupt or truncated ({_one_line(e)}): re-download it"
            f" (delete it from the cache if it came from there) or {_FIX}"
        ) from e
    return found


def _read_folder(path: Path, progress: bool | None) -> _Found:
    root = path
    if not any((path / s).is_dir() for s in SPLITS) and (path / "aclImdb").is_dir():
        root = path / "aclImdb"
    missing = [f"{s}/{lab}/" for s in SPLITS for lab in LABELS if not (root / s / lab).is_dir()]
    if missing:
        raise BertpooledError(
            f"IMDB folder {root} has no {', '.join(missing)}: {_FIX} (the folder holding train/ and test/)"
        )
    files = [
        (s, lab, entry)
        for s in SPLITS
        for lab in LABELS
        for entry in os.scandir(root / s / lab)
        if entry.name.endswith(".txt") and not entry.name.startswith(".") and entry.is_file()
    ]
    if (root / "train" / UNSUP).is_dir():
        files += [
            ("train", UNSUP, entry)
            for entry in os.scandir(root / "train" / UNSUP)
            if entry.name.endswith(".txt") and not entry.name.startswith(".") and entry.is_file()
        ]
    found: _Found = {}
    total = 0
    with _bar(len(files), "reviews", "reading IMDB", progress) as bar:
        for s, lab, entry in files:
            _check_size(entry.stat().st_size, total, entry.path)
            with open(entry.path, "rb") as f:
                data = f.read(MAX_REVIEW_BYTES + 1)
            _check_size(len(data), total, entry.path)  # a file that grew since, or a device
            total += len(data)
            _add(found, s, lab, entry.name[:-4], data, where=entry.path)
            bar.update()
    return found


def _assemble(found: _Found, source: str, path: Path) -> Imdb:
    if not any(label != UNSUP for _, label in found):
        raise BertpooledError(f"no IMDB reviews (train|test/pos|neg/*.txt) found in {path}: {_FIX}")
    missing = [f"{s}/{lab}/" for s in SPLITS for lab in LABELS if not found.get((s, lab))]
    if missing:
        raise BertpooledError(f"IMDB data {path} has no reviews under {', '.join(missing)}: {_FIX}")
    # One digest over train then test, in id order (unlabelled reviews have their own: `Imdb.unsup_digest`).
    splits, raws = [], []
    for rows in ({**found[(s, "neg")], **found[(s, "pos")]} for s in SPLITS):
        ids = sorted(rows)
        splits.append(Split(ids, [rows[rid][0] for rid in ids], _labels(ids, ids[0].split("/")[0])))
        raws += [rows[rid][1] for rid in ids]
    both = Split(splits[0].ids + splits[1].ids, [], np.concatenate([splits[0].labels, splits[1].labels]))
    unsup, unsup_digest, unlabelled = None, "", found.get(("train", UNSUP), {})
    if unlabelled:
        ids = sorted(unlabelled)
        unsup = Split(ids, [unlabelled[rid][0] for rid in ids], _labels(ids, "train"))
        unsup_digest = _digest_of(unsup, [unlabelled[rid][1] for rid in ids])
    return Imdb(splits[0], splits[1], source, _digest_of(both, raws), unsup, unsup_digest)
