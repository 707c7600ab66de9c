"""Label swap maps for horizontal flips of direction-sensitive classes.

A mirrored "pushing something from left to right" is "pushing something from right to left":
flipping such clips for augmentation is only correct if the label is swapped too. The pairs are
given by class *name* and turned into an index map for the class list at hand.

Each map lists every class of its dataset whose meaning a mirror image changes (the
reference's pairs for Something-Something, the left/right and clockwise pairs of Jester and of
the synthetic set): a map is complete for a class list that holds both classes of each pair or
neither, so mirrored test views can be swapped back exactly in label space.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["FLIP_PAIRS", "flip_label_map"]

_STH_PAIRS = (
    ("Pulling something from left to right", "Pulling something from right to left"),
    ("Pushing something from left to right", "Pushing something from right to left"),
    (
        "Turning the camera left while filming something",
        "Turning the camera right while filming something",
    ),
)

FLIP_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    # Something-Something v1 and v2 share these class names (v2: indices 86/87, 93/94, 166/167)
    "sthv1": _STH_PAIRS,
    "sthv2": _STH_PAIRS,
    "jester": (
        ("Swiping Left", "Swiping Right"),
        ("Sliding Two Fingers Left", "Sliding Two Fingers Right"),
        # a mirror image turns a clockwise rotation into an anticlockwise one
        ("Turning Hand Clockwise", "Turning Hand Counterclockwise"),
    ),
    # timeshift's synthetic dataset (see timeshift.data.synthetic)
    "synthetic": (
        ("moving left", "moving right"),
        ("rotating clockwise", "rotating anticlockwise"),
        ("orbiting clockwise", "orbiting anticlockwise"),
    ),
}


def flip_label_map(
    classes: Sequence[str], dataset: str, *, allow_absent: bool = False
) -> dict[int, int]:
    """``{index: swapped index}`` of the pairs of ``dataset`` for this class list.

    Matching ignores case and surrounding whitespace. Raises if a pair's class is missing, which
    usually means the class list belongs to another dataset. With ``allow_absent`` a pair
    whose two classes are both absent is skipped (a subset of the dataset's classes, e.g. some
    synthetic families); a pair with one class only still raises, since a mirrored clip of it
    would need a class the list does not have.
    """
    try:
        pairs = FLIP_PAIRS[dataset]
    except KeyError:
        raise ValueError(f"no flip map for {dataset!r}; known: {sorted(FLIP_PAIRS)}") from None
    index = {name.strip().lower(): i for i, name in enumerate(classes)}
    mapping: dict[int, int] = {}
    for a, b in pairs:
        missing = [n for n in (a, b) if n.lower() not in index]
        if allow_absent and len(missing) == 2:
            continue
        if missing:
            raise ValueError(f"flip map {dataset!r}: classes {missing} not in the class list")
        ia, ib = index[a.lower()], index[b.lower()]
        mapping[ia], mapping[ib] = ib, ia
    return mapping
