"""Caption tokenizer and vocabulary."""

from __future__ import annotations

import pytest
import torch

from visattn.data.text import tokenize
from visattn.data.vocab import SPECIAL_TOKENS, Vocabulary

# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ("Two dogs, one cat; and: a bird!", "two dogs one cat and a bird"),
        ("A man's dog doesn't like the cat.", "a man 's dog does n't like the cat"),
        ("They'll go; we've gone, I'd say I'm here.", "they 'll go we 've gone i 'd say i 'm here"),
        ("I can't, won't, cannot", "i ca n't wo n't can not"),
        ("the dogs' toys", "the dogs toys"),
        ("A black-and-white photo of a T-shirt", "a black-and-white photo of a t-shirt"),
        ("3.5 m/s at 7:30, 10,000 people, 1/2 cup", "3.5 m/s at 7:30 10,000 people 1/2 cup"),
        ("Mr. Smith in the U.S. on St. Patrick's day etc.", "mr. smith in the u.s. on st. patrick 's day etc."),
        ('She said "hello" and \'bye\'', "she said hello and bye"),
        ("“Curly” quotes — dashes… and don’t", "curly quotes dashes and do n't"),
        ("A dog... running -- fast - really", "a dog running fast really"),
        ("wow!!! really?!", "wow !!! really ?!"),
        ("a cat (small) [red] {x}", "a cat -lrb- small -rrb- -lsb- red -rsb- -lcb- x -rcb-"),
        ("A sign with the letter a. The end", "a sign with the letter a the end"),
        ("plan a. dog", "plan a. dog"),
        ("line one\nline two", "line one line two"),
        ("50% off $5 at AT&T", "50 % off $ 5 at at&t"),
        ("a 5 1/2 inch pipe", "a 5 1/2 inch pipe"),  # PTB's '5\xa01/2' is split again by the tool's BLEU/CIDEr
        ("   ", ""),
        ("", ""),
    ],
)
def test_tokenize_cases(text, expected):
    assert tokenize(text) == (expected.split(" ") if expected else [])


def test_tokenize_drops_exactly_the_tool_punctuation():
    # Every item of the COCO tool's list disappears; bracket names survive (the tool's list is upper-case).
    assert tokenize("'' ' `` ` . ? ! , : - -- ... ;") == []
    assert "-lrb-" in tokenize("(")


def test_tokenize_rejects_non_text():
    with pytest.raises(TypeError, match="str caption"):
        tokenize(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tokenize(["a", "dog"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- vocabulary
TRAIN = [["a", "dog", "runs"], ["a", "dog", "sits"], ["a", "cat", "sits"], ["the", "cat"]]


def test_build_min_count_and_order():
    vocab = Vocabulary.build(TRAIN, min_count=2)
    # Specials first, then by count (a:3) and ties alphabetically (cat, dog, sits: 2 each); singletons dropped.
    assert vocab.to_list() == [*SPECIAL_TOKENS, "a", "cat", "dog", "sits"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.token_to_id("<pad>") == 0
    assert "runs" not in vocab and vocab.token_to_id("runs") == vocab.unk_id
    assert Vocabulary.build(list(reversed(TRAIN)), min_count=2) == vocab  # independent of caption order
    assert len(Vocabulary.build(TRAIN, min_count=1)) == len(SPECIAL_TOKENS) + 6


def test_from_splits_uses_training_split_only():
    splits = {
        "train": [{"tokens": TRAIN[:2]}, {"tokens": TRAIN[2:]}],
        "val": [{"tokens": [["zebra", "zebra", "zebra"]]}],
        "test": [{"tokens": [["giraffe"]]}],
    }
    vocab = Vocabulary.from_splits(splits, min_count=1)
    assert "zebra" not in vocab and "giraffe" not in vocab
    assert vocab == Vocabulary.build(TRAIN)
    assert vocab.encode(["a", "zebra"]) == [1, vocab.token_to_id("a"), vocab.unk_id, 2]
    with pytest.raises(ValueError, match="no 'train' split.*'test', 'val'"):
        Vocabulary.from_splits({"val": splits["val"], "test": splits["test"]})


def test_from_splits_accepts_record_objects():
    class Record:
        def __init__(self, tokens):
            self.tokens = tokens

    vocab = Vocabulary.from_splits({"train": [Record(TRAIN)]})
    assert vocab == Vocabulary.build(TRAIN)


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(TRAIN)
    for caption in TRAIN:
        ids = vocab.encode(caption)
        assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and len(ids) == len(caption) + 2
        assert vocab.decode(ids) == caption
    truncated = vocab.encode(["a", "dog", "runs"], max_len=2)
    assert truncated == [1, vocab.token_to_id("a"), vocab.token_to_id("dog"), 2]
    assert vocab.encode([], max_len=5) == [1, 2]
    assert vocab.encode(["a"], max_len=0) == [1, 2]


def test_decode_stops_at_end_and_skips_specials():
    vocab = Vocabulary.build(TRAIN)
    a, dog = vocab.token_to_id("a"), vocab.token_to_id("dog")
    ids = [vocab.start_id, a, vocab.unk_id, dog, vocab.end_id, a, dog, vocab.pad_id]
    assert vocab.decode(ids) == ["a", "dog"]
    assert vocab.decode(ids, keep_unk=True) == ["a", "<unk>", "dog"]
    assert vocab.decode([a, vocab.pad_id, vocab.pad_id]) == ["a"]  # no <end>: until the sequence runs out
    assert vocab.decode(torch.tensor(ids)) == ["a", "dog"]  # tensors decode like lists
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([a, len(vocab)])


def test_encode_rejects_a_raw_string():
    vocab = Vocabulary.build(TRAIN)
    with pytest.raises(TypeError, match="tokenize it first"):
        vocab.encode("a dog")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(["a"], max_len=-1)


def test_list_round_trip_and_invalid_lists():
    vocab = Vocabulary.build(TRAIN)
    stored = vocab.to_list()
    stored.append("mutated")  # to_list returns a copy
    assert Vocabulary.from_list(vocab.to_list()) == vocab and len(vocab) == len(stored) - 1
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary.from_list(["a", "dog"])
    with pytest.raises(ValueError, match="appears twice"):
        Vocabulary.from_list([*SPECIAL_TOKENS, "dog", "dog"])
    with pytest.raises(ValueError, match="blank or contains whitespace"):
        Vocabulary.from_list([*SPECIAL_TOKENS, "hot dog"])
    with pytest.raises(TypeError):
        Vocabulary.from_list([*SPECIAL_TOKENS, 7])


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(TRAIN, min_count=0)
    with pytest.raises(ValueError, match="reserved token '<end>'"):
        Vocabulary.build([["a", "<end>"]])
    with pytest.raises(TypeError, match=r"caption 1 must be a list of tokens"):
        Vocabulary.build([["a"], "a dog"])


def test_check_compatible():
    vocab = Vocabulary.build(TRAIN)
    vocab.check_compatible(Vocabulary.from_list(vocab.to_list()))
    vocab.check_compatible(vocab.to_list())
    other = Vocabulary.build([*TRAIN, ["zebra"] * 5, ["okapi"]])
    with pytest.raises(ValueError) as info:
        vocab.check_compatible(other, names=("checkpoint", "dataset"))
    message = str(info.value)
    assert "checkpoint (10 tokens)" in message and "dataset (12 tokens)" in message
    # zebra (5 counts) took id 4 and shifted every later id.
    assert "6 of the 10 shared ids map to different tokens" in message and "2 ids exist on one side only" in message
    assert "id 4: 'a' vs 'zebra'" in message
    assert "2 tokens only in dataset, e.g. ['zebra', 'okapi']" in message
    swapped = vocab.to_list()
    swapped[4], swapped[5] = swapped[5], swapped[4]
    with pytest.raises(ValueError, match="2 of the 10 shared ids map to different tokens"):
        vocab.check_compatible(swapped)
