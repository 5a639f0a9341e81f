"""The course's one vocabulary: token <-> id maps with named special tokens, for every tokenizer of the course.

Notebook 05's letters (`shared.seq2seq`), 07's modular equations (`shared.arithmetic`) and 08's GloVe words
(`shared.glove`) all build a `Vocab`. Token i has id i: the order of `tokens` is the id assignment, so a
vocabulary is defined by its token list, and the same list always gives the same ids. Special tokens are
ordinary tokens that the vocabulary also knows by their role (padding, unknown, begin and end of a sequence).
"""

from __future__ import annotations

from collections.abc import Iterable

ROLES = ("pad", "unk", "bos", "eos")


class Vocab:
    """Token <-> id: `tokens[i]` is the token of id i and `ids[token]` its id; `pad_id`, `unk_id`, `bos_id`,
    `eos_id` are the ids of the special tokens named at construction (None for a role left out).

    Without an unknown token, encoding a token outside the vocabulary is an error. `leftout` may count the words
    a frequency cut-off left out (08's <unk> vector averages them); it travels with the vocabulary.
    """

    def __init__(self, tokens: Iterable[str], *, pad: str | None = None, unk: str | None = None,
                 bos: str | None = None, eos: str | None = None, leftout: dict[str, int] | None = None):
        self.tokens = list(tokens)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            twice = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"a Vocab holds each token once, but these come twice: {twice}")
        self.specials = {role: token for role, token in zip(ROLES, (pad, unk, bos, eos)) if token is not None}
        missing = [token for token in self.specials.values() if token not in self.ids]
        if missing:
            raise ValueError(f"the special tokens {missing} are not among the tokens")
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            self.ids[self.specials[role]] if role in self.specials else None for role in ROLES)
        self.leftout = dict(leftout or {})

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.ids

    def __eq__(self, other) -> bool:
        return (isinstance(other, Vocab) and self.tokens == other.tokens and self.specials == other.specials
                and self.leftout == other.leftout)

    def __repr__(self) -> str:
        shown = ", ".join(self.tokens[:8]) + (", ..." if len(self) > 8 else "")
        return f"{type(self).__name__}({len(self)} tokens: {shown})"

    def encode(self, tokens: str | Iterable[str], length: int | None = None) -> list[int]:
        """Ids of `tokens` (a list, or a string split at whitespace); with `length`, padded with pad_id to it.

        A token outside the vocabulary gets unk_id, or raises KeyError when there is no unknown token.
        """
        tokens = tokens.split() if isinstance(tokens, str) else list(tokens)
        if self.unk_id is None:
            unknown = [token for token in tokens if token not in self.ids]
            if unknown:
                raise KeyError(f"tokens not in the vocabulary: {unknown}")
            ids = [self.ids[token] for token in tokens]
        else:
            get, unk = self.ids.get, self.unk_id
            ids = [get(token, unk) for token in tokens]
        if length is None:
            return ids
        if self.pad_id is None:
            raise ValueError("padding to a length needs a pad token: build the Vocab with pad=...")
        if len(ids) > length:
            raise ValueError(f"{len(ids)} ids do not fit in length {length}")
        return ids + [self.pad_id] * (length - len(ids))

    def decode(self, ids, *, strip: bool = False) -> list[str]:
        """Tokens of `ids` (a list or a tensor of ints); with strip, only those before the first <eos>, less <pad>
        and <bos> (how a model's output reads)."""
        tokens = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            i = int(i)
            if strip and i == self.eos_id:
                break
            if not (strip and i in (self.pad_id, self.bos_id)):
                tokens.append(self.tokens[i])
        return tokens

    def to_dict(self) -> dict:
        """Plain lists and strings, for checkpoints (torch.save, loadable with weights_only=True)."""
        words = sorted(self.leftout)
        return {"tokens": list(self.tokens), "specials": dict(self.specials),
                "leftout_words": words, "leftout_counts": [self.leftout[w] for w in words]}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """The Vocab saved by to_dict."""
        leftout = dict(zip(data.get("leftout_words", []), data.get("leftout_counts", [])))
        return Vocab(data["tokens"], **data.get("specials", {}), leftout=leftout)
