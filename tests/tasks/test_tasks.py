"""The digit-pair task family and its split (pdiff_fast.tasks.family)."""
import pytest
import torch

from pdiff_fast.tasks.family import (TaskFamily, digit_pair_tasks, evidence, fixed_support, split_tasks, support,
                              task_by_name)


@pytest.fixture(scope="module")
def family():
    return TaskFamily(digit_pair_tasks())


def test_ninety_ordered_pairs():
    tasks = digit_pair_tasks()
    assert len(tasks) == 90 and len({t.name for t in tasks}) == 90
    assert task_by_name(tasks, "3-8").classes == (3, 8)
    with pytest.raises(ValueError, match="unknown task"):
        task_by_name(tasks, "3-3")


@pytest.mark.parametrize("held, seed", [(1, 0), (9, 0), (9, 1), (44, 3)])
def test_split_holds_out_whole_pairs_and_never_leaks(held, seed):
    tasks = digit_pair_tasks()
    seen, out = split_tasks(tasks, held, seed)
    assert len(out) == 2 * held and len(seen) + len(out) == 90
    assert not {t.name for t in seen} & {t.name for t in out}
    seen_pairs = {frozenset(t.classes) for t in seen}
    assert not seen_pairs & {frozenset(t.classes) for t in out}  # neither order of a held-out pair is seen
    assert split_tasks(tasks, held, seed) == (seen, out)  # fixed


def test_split_bad_input():
    with pytest.raises(ValueError, match="held_out_pairs"):
        split_tasks(digit_pair_tasks(), 45)
    with pytest.raises(ValueError, match="held_out_pairs"):
        split_tasks(digit_pair_tasks(), 0)


def test_task_data_relabels_and_keeps_the_fixed_split(family):
    d = family.data(task_by_name(family.tasks, "3-8"))
    swapped = family.data(task_by_name(family.tasks, "8-3"))
    src = family.source
    assert len(d.y_train) == int(((src.y_train == 3) | (src.y_train == 8)).sum())
    assert len(d.y_test) == int(((src.y_test == 3) | (src.y_test == 8)).sum())
    assert set(d.y_train.tolist()) == {0, 1}
    assert torch.equal(d.x_train, swapped.x_train) and torch.equal(d.y_train, 1 - swapped.y_train)
    # label 0 is digit 3: the images of label 0 are exactly the source's threes
    threes = src.x_train[src.y_train == 3]
    assert torch.equal(d.x_train[d.y_train == 0], threes)


def test_stacked_pads_and_counts(family):
    tasks = family.tasks[:3]
    x, y, counts = family.stacked(tasks, "test")
    for i, t in enumerate(tasks):
        d = family.data(t)
        assert counts[i] == len(d.y_test)
        assert torch.equal(x[i, :counts[i]], d.x_test) and torch.equal(y[i, :counts[i]], d.y_test)
        assert (x[i, counts[i]:] == 0).all()


def test_support_draws_only_real_samples_of_the_row_task(family):
    tasks = family.tasks[:4]
    x, y, counts = family.stacked(tasks)
    x[:, :].add_(0)  # real data
    for i, c in enumerate(counts):
        x[i, c:] = float("nan")  # padding must never be drawn
    rows = torch.tensor([0, 3, 3, 1])
    s = support(x, y, counts, rows, 50, torch.Generator().manual_seed(0), 2)
    assert s.shape == (4, 50, 64 + 2) and torch.isfinite(s).all()
    for r, t in enumerate(rows.tolist()):
        real = evidence(x[t, :counts[t]], y[t, :counts[t]], 2)
        for e in s[r]:
            assert (real == e).all(1).any()


def test_fixed_support_depends_on_the_seed_alone(family):
    x, y, counts = family.stacked(family.tasks[:3])
    a = fixed_support(x, y, counts, 8, [1, 2, 3], 2)
    b = fixed_support(x[1:], y[1:], counts[1:], 8, [2, 3], 2)
    assert torch.equal(a[1:], b)
    with pytest.raises(ValueError, match="one seed per task"):
        fixed_support(x, y, counts, 8, [1], 2)
