"""core.training.loop.grouped_split / grouped_folds: groups never straddle parts, classes are
balanced, the assignment follows the seed only."""

from __future__ import annotations

import numpy as np
import pytest

from glassbox.core.errors import TrainingDataError
from glassbox.core.training.loop import grouped_folds, grouped_split


def many_small_groups(seed: int = 0):
    """60 groups of 2..9 samples; each group mostly of one class (like photos of one
    landscape): labels and group names."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(60):
        size = int(rng.integers(2, 10))
        main = int(rng.integers(0, 2))
        labels += [main if rng.random() < 0.85 else 1 - main for _ in range(size)]
        groups += [f"flight{g % 3}_{g:03d}"] * size
    return np.asarray(labels), np.asarray(groups)


def test_no_group_in_two_folds_and_classes_balanced():
    labels, groups = many_small_groups()
    folds = grouped_folds(labels, groups, 5, seed=3)
    assert set(folds.tolist()) == set(range(5))
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1, g
    for c in (0, 1):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        target = (labels == c).sum() / 5
        # every fold within 15 % of its share of the class (groups of up to 9 samples)
        assert np.all(np.abs(per_fold - target) <= 0.15 * target + 1), (c, per_fold, target)


def test_unequal_shares_hold_out_about_a_fifth():
    labels, groups = many_small_groups(1)
    part = grouped_split(labels, groups, [0.2, 0.8], seed=0)
    for c in (0, 1):
        share = (part[labels == c] == 0).mean()
        assert 0.17 <= share <= 0.23, (c, share)
    held = set(groups[part == 0])
    assert held and not held & set(groups[part == 1])


def test_deterministic_by_seed_and_independent_of_sample_order():
    labels, groups = many_small_groups(2)
    a = grouped_folds(labels, groups, 5, seed=7)
    assert np.array_equal(a, grouped_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(a, grouped_folds(labels, groups, 5, seed=8))
    order = np.random.default_rng(0).permutation(labels.size)
    shuffled = grouped_folds(labels[order], groups[order], 5, seed=7)
    assert np.array_equal(shuffled, a[order])


def test_a_class_pure_group_structure_is_still_split_sensibly():
    # 10 groups: 5 all of class 0, 5 all of class 1 -> each of 5 folds gets one of each
    labels = np.repeat([0, 1], 50)
    groups = np.repeat(np.arange(10), 10)
    folds = grouped_folds(labels, groups, 5, seed=0)
    for k in range(5):
        assert np.bincount(labels[folds == k], minlength=2).tolist() == [10, 10]


def test_bad_input_is_refused():
    with pytest.raises(TrainingDataError, match="cannot fill"):
        grouped_folds(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]), 3, seed=0)
    with pytest.raises(TrainingDataError, match="labels"):
        grouped_folds(np.array([0, 1, 0]), np.array(["a", "b"]), 2, seed=0)
    with pytest.raises(TrainingDataError, match="2 folds"):
        grouped_folds(np.array([0, 1]), np.array(["a", "b"]), 1, seed=0)
    with pytest.raises(TrainingDataError, match="share"):
        grouped_split(np.array([0, 1]), np.array(["a", "b"]), [1.0, 0.0], seed=0)
