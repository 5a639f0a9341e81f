"""shared.vocab.Vocab, the one vocabulary behind 05's letters, 07's equations and 08's GloVe words."""

import pytest
import torch

from shared.arithmetic import Tokenizer
from shared.glove import glove_vocab
from shared.seq2seq import letters_vocab
from shared.vocab import Vocab


def test_ids_follow_the_order_of_the_tokens_and_never_move():
    tokens = ["<pad>", "<eos>", "b", "a", "c"]
    vocab = Vocab(tokens, pad="<pad>", eos="<eos>")
    assert vocab.tokens == tokens and vocab.ids == {t: i for i, t in enumerate(tokens)} and len(vocab) == 5
    assert Vocab(tokens, pad="<pad>", eos="<eos>").ids == vocab.ids == Vocab(iter(tokens), pad="<pad>", eos="<eos>").ids
    assert Vocab(tokens[::-1]).ids["a"] == 1, "another order is another vocabulary"
    assert "a" in vocab and "z" not in vocab


def test_specials_are_found_by_role_wherever_they_are():
    vocab = Vocab(["x", "PAD", "BOS", "y", "EOS"], pad="PAD", bos="BOS", eos="EOS")
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (1, 2, 4, None)
    assert vocab.specials == {"pad": "PAD", "bos": "BOS", "eos": "EOS"}
    with pytest.raises(ValueError, match="not among the tokens"):
        Vocab(["x"], pad="<pad>")
    with pytest.raises(ValueError, match=r"come twice: \['x'\]"):
        Vocab(["x", "y", "x"])


def test_round_trip_lists_strings_tensors_and_padding():
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "a", "b"], pad="<pad>", bos="<bos>", eos="<eos>")
    ids = vocab.encode(["<bos>", "b", "a", "<eos>"])
    assert ids == [1, 4, 3, 2] and vocab.encode("<bos> b a <eos>") == ids
    assert vocab.decode(ids) == ["<bos>", "b", "a", "<eos>"] == vocab.decode(torch.tensor(ids))
    assert vocab.encode(["b", "a", "<eos>"], 6) == [4, 3, 2, 0, 0, 0]
    assert vocab.decode([1, 4, 3, 2, 4, 0], strip=True) == ["b", "a"], "strip: up to <eos>, without <pad> and <bos>"
    assert vocab.decode([0, 4, 0, 3], strip=True) == ["b", "a"]
    with pytest.raises(ValueError, match="do not fit in length 2"):
        vocab.encode(["b", "a", "<eos>"], 2)
    with pytest.raises(ValueError, match="needs a pad token"):
        Vocab(["a"]).encode(["a"], 3)


def test_unknown_tokens_map_to_unk_or_raise_a_clear_error():
    with_unk = Vocab(["<unk>", "a"], unk="<unk>")
    assert with_unk.encode(["a", "zebra", "a"]) == [1, 0, 1]
    assert with_unk.decode(with_unk.encode(["zebra"])) == ["<unk>"]
    with pytest.raises(KeyError, match=r"tokens not in the vocabulary: \['zebra', 'q'\]"):
        Vocab(["a"]).encode(["a", "zebra", "q"])


def test_a_checkpoint_restores_tokens_specials_and_leftout(tmp_path):
    vocab = Vocab(["<pad>", "<unk>", "dog"], pad="<pad>", unk="<unk>", leftout={"cat": 3, "ant": 1})
    torch.save({"vocab": vocab.to_dict()}, tmp_path / "v.pt")
    restored = Vocab.from_dict(torch.load(tmp_path / "v.pt", weights_only=True)["vocab"])
    assert restored == vocab and restored.unk_id == 1 and restored.leftout == {"ant": 1, "cat": 3}
    assert restored != Vocab(["<pad>", "<unk>", "dog"], pad="<pad>", leftout={"cat": 3, "ant": 1}), "specials count"
    assert repr(vocab) == "Vocab(3 tokens: <pad>, <unk>, dog)"


def test_the_three_course_vocabularies_keep_their_ids():
    letters = letters_vocab(["a", "b"])
    assert letters.tokens == ["<pad>", "<bos>", "<eos>", "a", "b"] and (letters.pad_id, letters.bos_id, letters.eos_id) == (0, 1, 2)
    equations = Tokenizer(3, "+")
    assert equations.tokens == ["0", "1", "2", "+", "=", "BOS", "EOS", "PAD"] and isinstance(equations, Vocab)
    assert (equations.eq_id, equations.bos_id, equations.eos_id, equations.pad_id) == (4, 5, 6, 7)
    assert equations.decode([5, 1, 3, 2, 4, 0, 6]) == "BOS 1 + 2 = 0 EOS" and equations.tokens_of([7]) == ["PAD"]
    words = glove_vocab(["the", "dog"], {"cat": 2})
    assert words.tokens == ["<pad>", "<unk>", "<bos>", "<eos>", "the", "dog"] and words.leftout == {"cat": 2}
    assert (words.pad_id, words.unk_id, words.bos_id, words.eos_id) == (0, 1, 2, 3)
