"""Parsing and validating einsum equations (numpy's semantics), for :mod:`lambda_export.passes.einsum`.

:func:`parse_einsum_equation` turns an equation and the operands' ranks into an :class:`EinsumSpec`: every subscript
and every dimension covered by ``...`` becomes an integer label; ``...`` dims are right-aligned across operands, as
numpy broadcasts them. Letters are never case-folded, so ``I`` and ``i`` stay distinct. The implicit output (no
``->``) follows numpy: the ``...`` dims first, then the letters that occur exactly once, sorted by character code
(upper case before lower case).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence

import numpy as np

__all__ = ["ELLIPSIS", "LETTERS", "EinsumSpec", "parse_einsum_equation"]

LETTERS = frozenset(string.ascii_letters)
ELLIPSIS = "..."


@dataclasses.dataclass(frozen=True)
class EinsumSpec:
    """A parsed, validated einsum equation.

    Attributes:
        equation: the equation as given.
        operands: for each operand, the label id of each of its axes (``...`` expanded to its dims).
        output: the label id of each output axis (an implicit output already resolved the numpy way).
        label_names: the name of each label id: its letter, or ``...0``, ``...1``... for the dims covered by ``...``
            (right-aligned across operands, so ``...0`` is the left-most broadcast dim).
        explicit_output: whether the equation has ``->``.
    """

    equation: str
    operands: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]
    label_names: tuple[str, ...]
    explicit_output: bool

    @property
    def has_repeated_subscripts(self) -> bool:
        """True when a subscript repeats within one operand (a diagonal or trace, such as ``ii->i``)."""
        return any(len(set(labels)) != len(labels) for labels in self.operands)

    def lowercase_equation(self) -> str:
        """An equivalent explicit equation over distinct lower-case letters, with ``...`` spelled out.

        Each label (a letter of either case, or a dim covered by ``...``) gets a letter of its own, so ``bIi,iK->bIK``
        becomes ``abc,cd->abd`` — never the wrong ``bii,ik->bik`` that lower-casing gives.

        Raises:
            ValueError: the equation has more than 26 labels.
        """
        if len(self.label_names) > len(string.ascii_lowercase):
            raise ValueError(
                f"einsum equation {self.equation!r} has {len(self.label_names)} distinct labels; "
                "only 26 lower-case letters exist"
            )
        order: dict[int, str] = {}
        for label in [*(lbl for op in self.operands for lbl in op), *self.output]:
            order.setdefault(label, string.ascii_lowercase[len(order)])
        terms = ["".join(order[lbl] for lbl in labels) for labels in self.operands]
        return ",".join(terms) + "->" + "".join(order[lbl] for lbl in self.output)


@dataclasses.dataclass(frozen=True)
class _Term:
    letters: tuple[str, ...]
    ellipsis_at: int | None  # index in `letters` where '...' sits, None without '...'


def _parse_term(term: str, where: str) -> _Term:
    letters: list[str] = []
    ellipsis_at: int | None = None
    i = 0
    while i < len(term):
        char = term[i]
        if char == ".":
            if term[i : i + 3] != ELLIPSIS:
                raise ValueError(f"{where} has a '.' that is not part of an ellipsis '...'")
            if ellipsis_at is not None:
                raise ValueError(f"{where} has more than one ellipsis '...'")
            ellipsis_at = len(letters)
            i += 3
            continue
        if char in LETTERS:
            letters.append(char)
        elif not char.isspace():
            raise ValueError(
                f"{where} has an invalid character {char!r}: subscripts must be letters a-z or A-Z, or '...'"
            )
        i += 1
    return _Term(tuple(letters), ellipsis_at)


def parse_einsum_equation(equation: str, ranks: Sequence[int]) -> EinsumSpec:
    """Parse and validate an einsum equation the way ``numpy.einsum`` reads it.

    Args:
        equation: e.g. ``"bIi,iK->bIK"``, ``"...ij,...jk"`` (implicit output), ``"ij->"``. Whitespace is ignored.
        ranks: the rank of each operand.

    Returns:
        The labels of each operand axis and of each output axis (see :class:`EinsumSpec`). Repeated subscripts within
        an operand (``ii->i``) are valid einsum and are returned as such; check ``has_repeated_subscripts``.

    Raises:
        ValueError: with a message naming the problem: no operand, wrong operand count, a character that is not a
            letter, a stray '.', more than one '...' in a term, more than one '->', a rank that does not match the
            subscripts, an output subscript that is repeated or not in any input, or broadcast ('...') dims that the
            output drops.
    """
    if not isinstance(equation, str):
        raise ValueError(f"einsum equation must be a string, got {type(equation).__name__}")
    ranks = list(ranks)
    prefix = f"einsum equation {equation!r}"
    if not ranks:
        raise ValueError(f"{prefix}: einsum needs at least one operand")
    if equation.count("->") > 1:
        raise ValueError(f"{prefix} has more than one '->'")
    lhs, arrow, rhs = equation.partition("->")
    raw_terms = lhs.split(",")
    if len(raw_terms) != len(ranks):
        raise ValueError(
            f"{prefix} has {len(raw_terms)} input term(s) but {len(ranks)} operand(s) were given "
            "(one comma-separated term per operand)"
        )
    terms = [_parse_term(t, f"{prefix}: operand {k} ({t.strip()!r})") for k, t in enumerate(raw_terms)]
    out_term = _parse_term(rhs, f"{prefix}: the output") if arrow else None

    ellipsis_ranks: list[int] = []
    for k, (term, rank) in enumerate(zip(terms, ranks, strict=True)):
        if not isinstance(rank, int | np.integer) or rank < 0:
            raise ValueError(f"{prefix}: operand {k} has an invalid rank {rank!r}")
        n_letters = len(term.letters)
        if term.ellipsis_at is None:
            if n_letters != rank:
                raise ValueError(
                    f"{prefix}: operand {k} has rank {rank} but its subscripts {raw_terms[k].strip()!r} "
                    f"name {n_letters} dim(s)"
                )
            ellipsis_ranks.append(0)
        else:
            if n_letters > rank:
                raise ValueError(
                    f"{prefix}: operand {k} has rank {rank} but its subscripts {raw_terms[k].strip()!r} "
                    f"name {n_letters} dim(s) besides '...'"
                )
            ellipsis_ranks.append(int(rank) - n_letters)
    n_broadcast = max(ellipsis_ranks)

    label_names: list[str] = [f"...{i}" for i in range(n_broadcast)]
    letter_ids: dict[str, int] = {}

    def letter_id(letter: str) -> int:
        if letter not in letter_ids:
            letter_ids[letter] = len(label_names)
            label_names.append(letter)
        return letter_ids[letter]

    operands: list[tuple[int, ...]] = []
    for term, n_ell in zip(terms, ellipsis_ranks, strict=True):
        ids = [letter_id(c) for c in term.letters]
        if term.ellipsis_at is not None:
            ids[term.ellipsis_at : term.ellipsis_at] = range(n_broadcast - n_ell, n_broadcast)
        operands.append(tuple(ids))

    if out_term is not None:
        seen: set[str] = set()
        for c in out_term.letters:
            if c in seen:
                raise ValueError(f"{prefix}: output subscript {c!r} appears more than once")
            if c not in letter_ids:
                raise ValueError(f"{prefix}: output subscript {c!r} does not appear in any input")
            seen.add(c)
        out_ids = [letter_ids[c] for c in out_term.letters]
        if out_term.ellipsis_at is not None:
            out_ids[out_term.ellipsis_at : out_term.ellipsis_at] = range(n_broadcast)
        elif n_broadcast:
            raise ValueError(
                f"{prefix}: the operands have {n_broadcast} dim(s) covered by '...' but the output has no '...' "
                "to keep them (numpy rejects this too)"
            )
        output = tuple(out_ids)
    else:
        counts: dict[str, int] = {}
        for term in terms:
            for c in term.letters:
                counts[c] = counts.get(c, 0) + 1
        # numpy: broadcast dims first, then letters seen exactly once, sorted by character code ('Z' < 'a').
        singles = sorted(c for c, n in counts.items() if n == 1)
        output = tuple(range(n_broadcast)) + tuple(letter_ids[c] for c in singles)

    return EinsumSpec(
        equation=equation,
        operands=tuple(operands),
        output=output,
        label_names=tuple(label_names),
        explicit_output=bool(arrow),
    )
