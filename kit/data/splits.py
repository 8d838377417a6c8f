"""Seeded splits by conversation (`Conversation`s, or the rows of a written split), optionally stratified by a
metadata field, and k-fold assignment."""

from __future__ import annotations

import random


def _metadata(conversation) -> dict:
    """A `Conversation`'s metadata, or a written row's (kit.crossval splits the rows it reads back)."""
    return conversation.get("metadata", {}) if isinstance(conversation, dict) else conversation.metadata


def _stratified_order(conversations: list[dict], seed: int, stratify: str | None) -> list[dict]:
    order = list(conversations)
    random.Random(seed).shuffle(order)
    if stratify:
        # Grouping by the field (stable, so each group stays shuffled) and then dealing positions out
        # evenly gives every group its share of each split, to within one conversation.
        order.sort(key=lambda c: str(_metadata(c).get(stratify, "")))
    return order


def split(
    conversations: list[dict], validation: float, test: float, seed: int, stratify: str | None = None
) -> dict[str, list[dict]]:
    """A seeded shuffle cut into exact shares (at least one test conversation when test > 0).

    A conversation is one item, so it never spans two splits. With `stratify`, each value of that
    metadata field gets the same shares (to within one conversation).
    """
    n = len(conversations)
    n_test = max(1, round(n * test)) if test > 0 and n >= 3 else 0
    n_val = max(1, round(n * validation)) if validation > 0 and n - n_test >= 2 else 0
    if not stratify:
        order = _stratified_order(conversations, seed, None)
        return {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    order = _stratified_order(conversations, seed, stratify)
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    # Deal the positions out: each split takes a position whenever it is behind its running quota, so
    # every stretch of the grouped order (every group) gets its share, to within one.
    for i, conversation in enumerate(order):
        if len(out["test"]) < ((i + 1) * n_test + n // 2) // n:
            out["test"].append(conversation)
        elif len(out["validation"]) < ((i + 1) * n_val + n // 2) // n:
            out["validation"].append(conversation)
        else:
            out["train"].append(conversation)
    # The two quotas can land on the same position; settle the difference from train (rare, at most a few).
    for name, target in (("test", n_test), ("validation", n_val)):
        while len(out[name]) < target and out["train"]:
            out[name].append(out["train"].pop())
    return out


def folds(conversations: list[dict], k: int, seed: int, stratify: str | None = None) -> list[list[dict]]:
    """k disjoint folds of near-equal size (stratified when asked), for cross-validation."""
    order = _stratified_order(conversations, seed + 1, stratify)
    result: list[list[dict]] = [[] for _ in range(k)]
    for i, conversation in enumerate(order):
        result[i % k].append(conversation)
    return result
