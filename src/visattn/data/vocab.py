"""Caption vocabulary: token <-> id, built from the training split only.

A :class:`Vocabulary` is an ordered list of tokens; the position of a token is its id. The first four are the
special tokens ``<pad>`` (0), ``<start>`` (1), ``<end>`` (2) and ``<unk>`` (3). The list itself
(:meth:`Vocabulary.to_list`) is what a model config and its checkpoint store, so ``Vocabulary.from_list``
rebuilds exactly the same mapping and :meth:`Vocabulary.check_compatible` can tell a checkpoint's vocabulary
apart from a dataset's before any id is misread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["PAD", "START", "END", "UNK", "SPECIAL_TOKENS", "Vocabulary"]

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
#: Special tokens in id order: ``<pad>`` must be 0 so zero-padded batches need no extra mapping.
SPECIAL_TOKENS = (PAD, START, END, UNK)

_MAX_EXAMPLES = 5


def _check_token_sequence(tokens: Any, what: str) -> None:
    """Reject a bare string (iterating it would give characters) and non-string items."""
    if isinstance(tokens, str):
        raise TypeError(f"{what} must be a list of tokens, got the string {tokens!r:.60}; tokenize it first")
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"{what}[{i}] must be a str token, got {type(token).__name__}: {token!r:.60}")


class Vocabulary:
    """Ordered token list with the four special tokens first.

    Args:
        tokens: every token in id order; must start with :data:`SPECIAL_TOKENS` and hold no duplicates or blank
            tokens. Usually built with :meth:`build` / :meth:`from_splits` or restored with :meth:`from_list`.
    """

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        _check_token_sequence(tokens, "vocabulary")
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[: len(SPECIAL_TOKENS)]}"
            )
        index: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if not token or token != token.strip() or any(c.isspace() for c in token):
                raise ValueError(f"vocabulary token {i} is blank or contains whitespace: {token!r}")
            if token in index:
                raise ValueError(f"vocabulary token {token!r} appears twice (ids {index[token]} and {i})")
            index[token] = i
        self._tokens = tokens
        self._index = index

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], *, min_count: int = 1) -> Vocabulary:
        """Build from tokenized captions, keeping tokens seen at least ``min_count`` times.

        Tokens are ordered by decreasing count, ties alphabetically, so the result does not depend on the
        order of the captions. Pass training captions only (see :meth:`from_splits`).

        Args:
            captions: token lists, e.g. ``[["a", "dog"], ["a", "cat"]]``.
            min_count: minimum number of occurrences (>= 1); rarer tokens map to ``<unk>``.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        counts: Counter[str] = Counter()
        for i, caption in enumerate(captions):
            _check_token_sequence(caption, f"caption {i}")
            counts.update(caption)
        for special in SPECIAL_TOKENS:
            if special in counts:
                raise ValueError(f"captions contain the reserved token {special!r}; remove it from the data")
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([*SPECIAL_TOKENS, *kept])

    @classmethod
    def from_splits(
        cls,
        splits: Mapping[str, Iterable[Any]],
        *,
        min_count: int = 1,
        train_split: str = "train",
    ) -> Vocabulary:
        """Build from the training split of a reader's output, never from validation or test captions.

        Args:
            splits: split name -> records, each with a ``tokens`` attribute or key holding a list of token lists
                (what :func:`visattn.data.karpathy.read_karpathy` returns).
            min_count: see :meth:`build`.
            train_split: the name of the training split.

        Raises:
            ValueError: ``train_split`` is not among the splits.
        """
        if train_split not in splits:
            raise ValueError(
                f"no {train_split!r} split to build the vocabulary from; splits present: {sorted(splits)}"
            )

        def captions() -> Iterable[Sequence[str]]:
            for record in splits[train_split]:
                yield from record["tokens"] if isinstance(record, Mapping) else record.tokens

        return cls.build(captions(), min_count=min_count)

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Rebuild from :meth:`to_list` output (what a checkpoint config stores)."""
        return cls(tokens)

    def to_list(self) -> list[str]:
        """All tokens in id order (a copy), specials first; JSON-serialisable."""
        return list(self._tokens)

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def token_to_id(self, token: str) -> int:
        """Id of ``token``, ``unk_id`` for an unknown token."""
        return self._index.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        """Token with id ``index``; ValueError when out of range."""
        if not 0 <= index < len(self._tokens):
            raise ValueError(f"token id {index} is outside the vocabulary (size {len(self._tokens)})")
        return self._tokens[index]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """Ids of ``<start> tokens <end>``, unknown tokens as ``<unk>``.

        Args:
            tokens: one tokenized caption, e.g. ``tokenize("A dog.")``.
            max_len: keep at most this many words (the result then has at most ``max_len + 2`` ids);
                ``None`` keeps all.

        Returns:
            ``[start_id, id_1, ..., id_n, end_id]`` with no padding (padding is the collate function's job,
            with ``pad_id``).
        """
        _check_token_sequence(tokens, "tokens")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0):
            raise ValueError(f"max_len must be None or an int >= 0, got {max_len!r}")
        words = tokens if max_len is None else tokens[:max_len]
        return [self.start_id, *(self._index.get(t, self.unk_id) for t in words), self.end_id]

    def decode(self, ids: Iterable[int], *, keep_unk: bool = False) -> list[str]:
        """Tokens of an id sequence: stops at the first ``<end>``, skips ``<pad>`` and ``<start>``.

        Args:
            ids: token ids (ints, or anything ``int()`` accepts such as a 1-D tensor's items).
            keep_unk: keep ``<unk>`` as a token instead of dropping it.

        Raises:
            ValueError: an id outside the vocabulary.
        """
        words: list[str] = []
        for raw_id in ids:
            index = int(raw_id)
            if index == self.end_id:
                break
            if index in (self.pad_id, self.start_id) or (index == self.unk_id and not keep_unk):
                continue
            words.append(self.id_to_token(index))
        return words

    # ------------------------------------------------------------------ compatibility
    def check_compatible(
        self,
        other: Vocabulary | Sequence[str],
        *,
        names: tuple[str, str] = ("this vocabulary", "the other vocabulary"),
    ) -> None:
        """Raise unless ``other`` maps every id to the same token.

        Args:
            other: a :class:`Vocabulary` or its token list (e.g. from a checkpoint config).
            names: how to call the two sides in the message, e.g. ``("checkpoint", "dataset")``.

        Raises:
            ValueError: the vocabularies differ; the message gives the sizes, how many ids map to different
                tokens, and examples of differing ids and of tokens only one side has.
        """
        theirs = other.to_list() if isinstance(other, Vocabulary) else list(other)
        _check_token_sequence(theirs, names[1])
        mine = self._tokens
        if mine == theirs:
            return
        differing = [i for i in range(min(len(mine), len(theirs))) if mine[i] != theirs[i]]
        mine_set, theirs_set = set(mine), set(theirs)
        only_mine = [t for t in mine if t not in theirs_set]
        only_theirs = [t for t in theirs if t not in mine_set]
        shared = min(len(mine), len(theirs))
        summary = f"{len(differing)} of the {shared} shared ids map to different tokens"
        if len(mine) != len(theirs):
            summary += f", and {abs(len(mine) - len(theirs))} ids exist on one side only"
        lines = [
            f"vocabulary mismatch between {names[0]} ({len(mine)} tokens) and {names[1]} ({len(theirs)} tokens):",
            summary,
        ]
        if differing:
            shown = ", ".join(f"id {i}: {mine[i]!r} vs {theirs[i]!r}" for i in differing[:_MAX_EXAMPLES])
            lines.append(f"e.g. {shown}")
        if only_mine:
            lines.append(f"{len(only_mine)} tokens only in {names[0]}, e.g. {only_mine[:_MAX_EXAMPLES]}")
        if only_theirs:
            lines.append(f"{len(only_theirs)} tokens only in {names[1]}, e.g. {only_theirs[:_MAX_EXAMPLES]}")
        lines.append("use the vocabulary stored with the checkpoint to encode and decode this data")
        raise ValueError("\n".join(lines))
