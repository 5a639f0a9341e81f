"""TinyStories for the LSTM language model: the tokenizer, the prepared splits, and `make data`.

`make data` (`prepare`) writes `data_dir()/tiny/`:
  tiny.train.tokens, tiny.valid.tokens, tiny.test.tokens   one story per line: `<bos> tok ... <eos>`
  MANIFEST.json   where the text came from (sha256 of each source file), the rule that cut the
                  splits, and the stories and tokens of each split.

Where the text comes from:
* Offline: `TINYSTORIES_DIR=/folder make data`. The folder holds `train.txt` and `valid.txt`, stories
  separated by lines holding only `<|endoftext|>` (the format of the official files). A file whose
  sha256 is one of KNOWN_SLICE is reported as verified; any other copy is used too, and reported as
  unverified. Splits: valid = the first 1,000 stories of valid.txt; test = 1,000 stories of
  train.txt chosen by a fixed seed (the smallest sha256 of seed + story text, which does not
  depend on any library's random generator); train = the other stories of train.txt, in file order.
  A train.txt of fewer than 10,000 stories (at least 10) gives a tenth of them, rounded down, to
  test: a small folder such as the tests' sample (tests/data/tinystories-sample) is cut the same way.
  A folder holding the official `TinyStories-train.txt` / `TinyStories-valid.txt` instead is cut
  with the online rule below.
* Online (no TINYSTORIES_DIR): the official files are downloaded with pooch into
  `data_dir()/raw/`. Splits: train = the first 20,000 stories of TinyStories-train.txt (read as a
  stream, never loaded whole), valid = the first 1,000 stories of TinyStories-valid.txt, test = its
  stories 1,000..1,999. The base URL is `$TINYSTORIES_URL` (default: the Hugging Face dataset).
  Checksums are TRUST ON FIRST USE until a maintainer pins them: REGISTRY maps each URL to its
  sha256, and `None` means "not pinned yet": the first download records its sha256 in
  `data_dir()/raw/checksums.json` and every later download or cached copy is verified against it.
  Pin a hash by writing it into REGISTRY.

TinyStories (Eldan and Li, 2023, arXiv:2305.07759) is licensed CDLA-Sharing-1.0: anything derived
from it and shared must keep that licence and the attribution.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
SPLITS = ("train", "valid", "test")
SEPARATOR = "<|endoftext|>"

# Bump when tokenize() changes: prepared files made by another version are then rebuilt.
TOKENIZER_VERSION = 1

# sha256 of the slice in ../shared/data/tinystories (its SOURCE.md).
KNOWN_SLICE = {
    "train.txt": "f4158bf38861adbbc01e6aa4912c366fa99b3b29671259ee21ac7f84f7c5b496",
    "valid.txt": "9eceb5a00858dac75b2ea27f6923896b046344869a4eda23638e3d82a67788b8",
}

HF_BASE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
OFFICIAL_FILES = {"train": "TinyStories-train.txt", "valid": "TinyStories-valid.txt"}
OFFICIAL_SIZES = {"train": "about 1.9 GB", "valid": "about 19 MB"}
GLOVE_ZIP_URL = "https://nlp.stanford.edu/data/glove.6B.zip"

# URL -> pinned sha256, or None while unknown (trust on first use; see the module docstring).
# These could not be learnt on the offline machine where this was written: pin them once known.
REGISTRY: dict[str, str | None] = {
    HF_BASE_URL + OFFICIAL_FILES["train"]: None,
    HF_BASE_URL + OFFICIAL_FILES["valid"]: None,
    GLOVE_ZIP_URL: None,
}

VALID_STORIES = 1_000
TEST_STORIES = 1_000
TEST_SHARE = 10  # a train.txt of fewer than TEST_SHARE * TEST_STORIES stories gives 1/TEST_SHARE of them to test
ONLINE_TRAIN_STORIES = 20_000
TEST_SEED = 0

SLICE_RULE = (
    f"valid = the first {VALID_STORIES:,} stories of valid.txt; "
    f"test = the {TEST_STORIES:,} stories of train.txt (1/{TEST_SHARE} of them, rounded down, when it holds fewer than "
    f"{TEST_SHARE * TEST_STORIES:,}) with the smallest sha256('tinystories-test-{TEST_SEED}\\n' + story text); "
    "train = the other stories of train.txt, in file order"
)
ONLINE_RULE = (
    f"train = the first {ONLINE_TRAIN_STORIES:,} stories of {OFFICIAL_FILES['train']}; "
    f"valid = the first {VALID_STORIES:,} stories of {OFFICIAL_FILES['valid']}; "
    f"test = its stories {VALID_STORIES:,}..{VALID_STORIES + TEST_STORIES - 1:,}"
)
TOKENS_NOTE = "tokens count every token of the file, <bos> and <eos> included"


class DataError(ValueError):
    """A source file or download that cannot be used, with a message meant for the person running `make data`."""


# ----------------------------------------------------------------------------------------------
# Tokenizer

_TO_ASCII = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
    "\u2014": " -- ", "\u2015": " -- ",
    "\u2026": "...",
    "\u00a0": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u200b": "", "\ufeff": "",
})
_DOTS = re.compile(r"\.{2,}")
_DASHES = re.compile(r"-{2,}")
_NEGATION = re.compile(r"(?<=[^\W_])n't\b")
_CLITIC = re.compile(r"(?<=[^\W_])'(s|re|ll|ve|d|m)\b")
_TOKEN = re.compile(
    r"""n't\b|'(?:s|re|ll|ve|d|m)\b     # clitics, already split from their word
      | \d+(?:[.,:]\d+)+                 # 3.5  1,000  10:30
      | [^\W_]+(?:['-][^\W_]+)*          # words, with inner hyphens or apostrophes (ice-cream, o'clock)
      | \.\.\. | --                      # ellipsis, dash
      | \S                               # any other character on its own
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[str]:
    """Lowercased tokens the way GloVe 6B has them: punctuation split off, "don't" -> do n't, "lily's" -> lily 's.

    Curly quotes and apostrophes become ' and ", dashes - (an em dash --), "…" becomes "...".
    Numbers keep their inner . , : (3.5, 1,000); hyphenated words stay whole (ice-cream).
    """
    text = text.lower().translate(_TO_ASCII)
    text = _DASHES.sub(" -- ", _DOTS.sub("...", text))
    text = _CLITIC.sub(r" '\1", _NEGATION.sub(" n't", text))
    return _TOKEN.findall(text)


# ----------------------------------------------------------------------------------------------
# Prepared splits

def data_dir() -> Path:
    """Where datasets live: $COURSE_DATA_DIR if set, else the repository's data/ folder."""
    configured = os.environ.get("COURSE_DATA_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "data"


def split_path(split: str) -> Path:
    """data_dir()/tiny/tiny.<split>.tokens."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return data_dir() / "tiny" / f"tiny.{split}.tokens"


def load_split(split: str, max_stories: int | None = None) -> list[list[str]]:
    """The prepared stories of `split` ("train", "valid", "test"), each a token list from <bos> to <eos>."""
    path = split_path(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the TinyStories splits are prepared by `make data`. Run `make data` in "
            "the course folder (it downloads TinyStories, about 1.9 GB, once), or point it at a local copy: "
            "`TINYSTORIES_DIR=/path/to/folder make data` (a folder holding train.txt and valid.txt). "
            "Set COURSE_DATA_DIR to keep the data somewhere other than the course's data/ folder."
        )
    with open(path, encoding="utf-8", newline="\n") as file:
        if max_stories is None:
            lines = file.read().split("\n")
        else:
            lines = [line.rstrip("\n") for line in itertools.islice(file, max_stories)]
    return [line.split(" ") for line in lines if line]


def story_line(tokens: list[str]) -> str:
    """One line of a .tokens file: `<bos> tok ... <eos>`."""
    return " ".join([BOS, *tokens, EOS])


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_stories(path: Path, limit: int | None = None) -> Iterator[str]:
    """Stories of a TinyStories text file (separated by `<|endoftext|>` lines), streamed; at most `limit`.

    Raises DataError for a missing, empty, non-UTF-8 or separator-less file.
    """
    if not path.is_file():
        raise DataError(f"{path} is missing")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: expected TinyStories text (stories separated by {SEPARATOR} lines)")
    story: list[str] = []
    separators = emitted = 0
    line_number = 0
    try:
        with open(path, encoding="utf-8-sig") as file:
            for line_number, line in enumerate(file, 1):
                if line.strip() == SEPARATOR:
                    separators += 1
                    text = "".join(story).strip()
                    story = []
                    if text:
                        yield text
                        emitted += 1
                        if limit is not None and emitted >= limit:
                            return
                else:
                    story.append(line)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (line {line_number + 1}: {error.reason}): is it a TinyStories .txt file?") from None
    if separators == 0:
        raise DataError(
            f"{path} has no {SEPARATOR} line: a TinyStories text file ends every story with a line holding only "
            f"{SEPARATOR} (as TinyStories-train.txt does)"
        )
    text = "".join(story).strip()
    if text:  # a last story without its separator
        yield text


def _stories(path: Path, limit: int | None = None, at_least: int = 1) -> list[str]:
    """iter_stories as a list; DataError when fewer than `at_least` stories are found."""
    stories = list(iter_stories(path, limit))
    if len(stories) < at_least:
        raise DataError(f"{path} holds {len(stories):,} stories; this split rule needs at least {at_least:,}")
    return stories


def _test_key(text: str) -> str:
    return hashlib.sha256(f"tinystories-test-{TEST_SEED}\n{text}".encode()).hexdigest()


def slice_test_stories(train_stories: int) -> int:
    """How many of train.txt's stories the offline rule (SLICE_RULE) moves to the test split."""
    return min(TEST_STORIES, train_stories // TEST_SHARE)


def _cut_slice(train_path: Path, valid_path: Path) -> dict[str, list[str]]:
    """The offline rule (SLICE_RULE) on train.txt / valid.txt."""
    train = _stories(train_path, at_least=TEST_SHARE)
    valid = _stories(valid_path, limit=VALID_STORIES)
    chosen = set(sorted(range(len(train)), key=lambda i: _test_key(train[i]))[:slice_test_stories(len(train))])
    return {
        "train": [text for i, text in enumerate(train) if i not in chosen],
        "valid": valid,
        "test": [text for i, text in enumerate(train) if i in chosen],
    }


def _cut_official(train_path: Path, valid_path: Path) -> dict[str, list[str]]:
    """The online rule (ONLINE_RULE) on the official TinyStories-train.txt / -valid.txt."""
    valid = _stories(valid_path, limit=VALID_STORIES + TEST_STORIES, at_least=VALID_STORIES + TEST_STORIES)
    return {
        "train": _stories(train_path, limit=ONLINE_TRAIN_STORIES, at_least=ONLINE_TRAIN_STORIES),
        "valid": valid[:VALID_STORIES],
        "test": valid[VALID_STORIES:],
    }


# ----------------------------------------------------------------------------------------------
# Downloads (pooch, trust on first use)

def _checksums_file() -> Path:
    return data_dir() / "raw" / "checksums.json"


def _recorded() -> dict[str, str]:
    path = _checksums_file()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def known_sha256(url: str) -> str | None:
    """The sha256 a download must have: pinned in REGISTRY, else recorded at its first download, else None."""
    return REGISTRY.get(url) or _recorded().get(url)


def fetch(url: str, size_note: str | None = None, log: Callable[[str], None] = print) -> tuple[Path, str]:
    """Download `url` with pooch into data_dir()/raw/ (cached), verified against known_sha256(url).

    Returns (path, sha256). A URL without a known hash is trusted on first use: its sha256 is printed
    and recorded in data_dir()/raw/checksums.json. A mismatch raises DataError and keeps no bad file.
    """
    try:
        import pooch
        import requests
    except ImportError:
        raise DataError("downloading needs pooch: run `make setup` (or `pip install pooch`)") from None

    raw = data_dir() / "raw"
    name = url.rstrip("/").rsplit("/", 1)[-1]
    known = known_sha256(url)
    if not (raw / name).is_file():
        log(f"downloading {url}{f' ({size_note})' if size_note else ''} into {raw}/ ...")
    try:
        path = Path(pooch.retrieve(url, known_hash=f"sha256:{known}" if known else None, fname=name, path=raw,
                                  progressbar=sys.stderr.isatty()))
    except ValueError as error:
        if "hash" not in str(error).lower():
            raise
        if REGISTRY.get(url):
            origin, remedy = "pinned in shared/tinystories.py REGISTRY", "update REGISTRY"
        else:
            origin = f"recorded at its first download in {_checksums_file()}"
            remedy = f"remove its entry from {_checksums_file()}"
        raise DataError(
            f"checksum mismatch for {url}: expected sha256 {known} ({origin}), but the downloaded file differs "
            f"({error}). The file on the server changed or the download was corrupted; nothing was kept. If you "
            f"trust the new file, {remedy} and run again."
        ) from None
    except requests.exceptions.RequestException as error:
        raise DataError(
            f"could not download {url}: {error}. Offline? Prepare from a local copy instead: "
            "TINYSTORIES_DIR=/path/to/folder make data"
        ) from None
    if known is None:
        digest = sha256_of(path)
        recorded = _recorded()
        recorded[url] = digest
        _checksums_file().write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        log(f"{name}: sha256 {digest} (no pinned checksum: trusted on first use and recorded in "
            f"{_checksums_file()}; later downloads are checked against it. Maintainers: pin it in REGISTRY.)")
        return path, digest
    log(f"{name}: sha256 verified ({known[:12]}...)")
    return path, known


def base_url() -> str:
    """$TINYSTORIES_URL (ending in /) or the Hugging Face dataset's."""
    url = os.environ.get("TINYSTORIES_URL") or HF_BASE_URL
    return url if url.endswith("/") else url + "/"


# ----------------------------------------------------------------------------------------------
# prepare (make data)

def _manifest_path(out: Path) -> Path:
    return out / "MANIFEST.json"


def _up_to_date(out: Path, inputs: dict) -> dict | None:
    """The existing manifest if it was made from `inputs` and every file it lists is intact, else None."""
    try:
        manifest = json.loads(_manifest_path(out).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("inputs") != inputs:
        return None
    for split in SPLITS:
        entry = manifest.get("splits", {}).get(split, {})
        path = out / entry.get("file", f"tiny.{split}.tokens")
        if not path.is_file() or path.stat().st_size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            return None
    return manifest


def _write(path: Path, text: str) -> None:
    """Write atomically (a temporary file, then rename)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
    os.replace(partial, path)


def _describe_local(folder: Path, names: list[str], log: Callable[[str], None]) -> dict[str, str]:
    """sha256 of each source file, with a verified / unverified line for each."""
    hashes = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing: TINYSTORIES_DIR must hold train.txt and valid.txt "
                            "(or the official TinyStories-train.txt and TinyStories-valid.txt)")
        hashes[name] = digest = sha256_of(path)
        if KNOWN_SLICE.get(name) == digest:
            log(f"{name}: verified, sha256 matches the course's TinyStories slice")
        else:
            log(f"{name}: sha256 {digest} is not a known copy (unverified): using it as your own copy")
    return hashes


def prepare(source: str | Path | None = None, out: str | Path | None = None, *, force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Write tiny.{train,valid,test}.tokens and MANIFEST.json into `out` (default data_dir()/tiny); returns the manifest.

    source: a folder with train.txt and valid.txt (or the official TinyStories-{train,valid}.txt), or
    None to download the official files (see the module docstring). Does nothing when the files are
    already up to date for the same inputs (unless force). Raises DataError for unusable sources.
    """
    out = Path(out) if out is not None else data_dir() / "tiny"
    if source is not None:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"TINYSTORIES_DIR={source} is not a folder")
        official = all((folder / name).is_file() for name in OFFICIAL_FILES.values()) and not (folder / "train.txt").is_file()
        names = list(OFFICIAL_FILES.values()) if official else ["train.txt", "valid.txt"]
        log(f"TinyStories from the local folder {folder}")
        hashes = _describe_local(folder, names, log)
        paths = [folder / name for name in names]
        rule, cut = (ONLINE_RULE, _cut_official) if official else (SLICE_RULE, _cut_slice)
        inputs = {"files": hashes, "rule": rule, "tokenizer": TOKENIZER_VERSION}
        described = str(folder)
    else:
        base = base_url()
        urls = [base + OFFICIAL_FILES[split] for split in ("train", "valid")]
        rule, cut = ONLINE_RULE, _cut_official
        known = {url: known_sha256(url) for url in urls}
        inputs = {"files": known, "rule": rule, "tokenizer": TOKENIZER_VERSION}
        if not force and all(known.values()) and (manifest := _up_to_date(out, inputs)):
            log(f"{out} is up to date (made from {base}): nothing to do")
            return manifest
        log(f"TinyStories from {base} (set TINYSTORIES_DIR=/path/to/folder to use a local copy instead)")
        fetched = [fetch(url, OFFICIAL_SIZES[split], log) for url, split in zip(urls, ("train", "valid"))]
        paths = [path for path, _ in fetched]
        inputs = {"files": {url: digest for url, (_, digest) in zip(urls, fetched)}, "rule": rule, "tokenizer": TOKENIZER_VERSION}
        described = base
    if not force and (manifest := _up_to_date(out, inputs)):
        log(f"{out} is up to date (same sources, rule and tokenizer): nothing to do")
        return manifest

    texts = cut(*paths)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in SPLITS:
        lines = [story_line(tokenize(text)) for text in texts[split]]
        body = "\n".join(lines) + "\n"
        path = out / f"tiny.{split}.tokens"
        _write(path, body)
        encoded = body.encode("utf-8")
        splits[split] = {
            "file": path.name,
            "stories": len(lines),
            "tokens": sum(line.count(" ") + 1 for line in lines),
            "bytes": len(encoded),
            "sha256": hashlib.sha256(encoded).hexdigest(),
        }
    manifest = {
        "dataset": "TinyStories (Eldan and Li, 2023, arXiv:2305.07759), licence CDLA-Sharing-1.0",
        "source": described,
        "inputs": inputs,
        "tokens_note": TOKENS_NOTE,
        "splits": splits,
    }
    _write(_manifest_path(out), json.dumps(manifest, indent=2) + "\n")
    for split, entry in splits.items():
        log(f"{split:>5}: {entry['stories']:>6,} stories {entry['tokens']:>10,} tokens -> {out / entry['file']}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`make data`: prepare the splits from $TINYSTORIES_DIR, or download them; errors as one clear line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Offline: TINYSTORIES_DIR=/path/to/folder (train.txt, valid.txt).")
    parser.add_argument("--source", default=os.environ.get("TINYSTORIES_DIR") or None,
                        help="folder with train.txt and valid.txt (default: $TINYSTORIES_DIR; unset = download)")
    parser.add_argument("--out", default=None, help="output folder (default: data/tiny, or $COURSE_DATA_DIR/tiny)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are up to date")
    args = parser.parse_args(argv)
    try:
        prepare(args.source, args.out, force=args.force)
    except (DataError, OSError) as error:
        print(f"make data: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
