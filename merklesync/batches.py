"""Cutting a stream of items into batches under a weight budget."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(
    items: Iterable[T],
    weight: Callable[[T], int],
    *,
    max_weight: int,
    max_items: int | None = None,
) -> Iterator[list[T]]:
    """Consecutive non-empty batches of ``items``: a batch is cut before an
    item that would take it over ``max_weight`` (summed ``weight``) or past
    ``max_items``. An item heavier than the budget travels alone."""
    batch: list[T] = []
    total = 0
    for item in items:
        w = weight(item)
        if batch and (
            total + w > max_weight or (max_items is not None and len(batch) >= max_items)
        ):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += w
    if batch:
        yield batch
