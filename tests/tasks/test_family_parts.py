"""pdiff_fast.tasks.family's parts, value by value, on a small made-up source dataset where every
image is known: the 90 task names in order, the split drawn by its seed (pinned), its bounds and
message, the task lookup, a family's checks, each task's data (relabelled, cached), the stacked and
padded data, the evidence rows and the support draws against the generator's own numbers. Written
against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_tasks.py
checks the same on the real digits."""
import itertools

import pytest
import torch

from pdiff_fast.data import TensorData
from pdiff_fast.tasks.family import (Task, TaskFamily, digit_pair_tasks, evidence, fixed_support, split_tasks, support,
                                     task_by_name)


def make_source():
    """Four classes; image k of a split is filled with its index k (train) or 100 + k (test)."""
    y_train = torch.tensor([0, 1, 2, 1, 3, 0, 1, 2, 0])
    y_test = torch.tensor([2, 0, 1, 3, 1])
    x_train = torch.arange(len(y_train), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 3).clone()
    x_test = (100 + torch.arange(len(y_test), dtype=torch.float32)).view(-1, 1, 1, 1).expand(-1, 1, 2, 3).clone()
    return TensorData("toy", x_train, y_train, x_test, y_test, 4)


@pytest.fixture
def family():
    return TaskFamily([Task("0-1", (0, 1)), Task("1-0", (1, 0)), Task("2-3", (2, 3)), Task("3-1", (3, 1))],
                      make_source())


def test_digit_pair_tasks_are_the_90_ordered_pairs_in_order():
    tasks = digit_pair_tasks()
    assert len(tasks) == 90
    assert tasks[:3] == [Task("0-1", (0, 1)), Task("0-2", (0, 2)), Task("0-3", (0, 3))]
    assert tasks[9] == Task("1-0", (1, 0)) and tasks[-1] == Task("9-8", (9, 8))
    assert [t.classes for t in tasks] == list(itertools.permutations(range(10), 2))
    assert all(t.name == f"{t.classes[0]}-{t.classes[1]}" for t in tasks)


def test_split_is_pinned_by_its_seed():
    tasks = digit_pair_tasks()
    seen, held = split_tasks(tasks, 9, 0)
    assert [t.name for t in held] == ["0-3", "0-9", "1-9", "2-7", "2-8", "3-0", "3-4", "4-3", "4-5", "4-8", "5-4",
                                      "7-2", "8-2", "8-4", "8-9", "9-0", "9-1", "9-8"]
    assert seen == [t for t in tasks if t not in held]  # both in the tasks' order
    assert split_tasks(tasks, 9) == (seen, held)  # seed 0 by default
    assert [t.name for t in split_tasks(tasks, 3, 1)[1]] == ["0-5", "2-6", "5-0", "6-2", "6-8", "8-6"]


def test_split_bounds_and_message():
    tasks = digit_pair_tasks()
    for held in (1, 44):
        seen, out = split_tasks(tasks, held)
        assert len(out) == 2 * held and len(seen) == 90 - 2 * held
    for held in (0, 45, -1):
        with pytest.raises(ValueError) as e:
            split_tasks(tasks, held)
        assert str(e.value) == f"held_out_pairs must be between 1 and 44 (of 45 pairs), got {held}"
    # the pairs are counted from the tasks given: one order of each pair counts once
    few = [Task("0-1", (0, 1)), Task("1-0", (1, 0)), Task("0-2", (0, 2))]
    assert split_tasks(few, 1, 0)[1] in ([few[0], few[1]], [few[2]])
    with pytest.raises(ValueError, match=r"^held_out_pairs must be between 1 and 1 \(of 2 pairs\), got 2$"):
        split_tasks(few, 2)


def test_task_by_name():
    tasks = digit_pair_tasks()
    assert task_by_name(tasks, "3-8") is tasks[3 * 9 + 7]
    twins = [Task("a", (0, 1)), Task("a", (1, 0))]
    assert task_by_name(twins, "a") is twins[0]  # the first of that name
    with pytest.raises(ValueError) as e:
        task_by_name(tasks[5:], "3-3")
    assert str(e.value) == "unknown task '3-3'; tasks are named like '0-6' (digit a vs digit b)"


def test_family_checks_its_tasks():
    src = make_source()
    with pytest.raises(ValueError) as e:
        TaskFamily([], src)
    assert str(e.value) == "a task family needs at least one task"
    with pytest.raises(ValueError) as e:
        TaskFamily([Task("0-1", (0, 1)), Task("0-1-2", (0, 1, 2))], src)
    assert str(e.value) == "every task of a family needs the same number of classes"
    three = TaskFamily((Task("a", (0, 1, 2)), Task("b", (2, 1, 0))), src)
    assert three.num_classes == 3 and three.source is src and three.names == ["a", "b"]
    assert isinstance(three.tasks, list) and three.input_shape == (1, 2, 3)


def test_family_source_defaults_to_the_digits():
    fam = TaskFamily([Task("0-1", (0, 1))])
    assert fam.source.name == "digits" and fam.input_shape == (1, 8, 8) and fam.num_classes == 2


def test_task_data_relabels_in_the_tasks_class_order(family):
    d = family.data(family.tasks[3])  # "3-1": digit 3 is label 0, digit 1 label 1
    assert d.name == "3-1" and d.num_classes == 2
    assert d.x_train[:, 0, 0, 0].tolist() == [1.0, 3.0, 4.0, 6.0] and d.y_train.tolist() == [1, 1, 0, 1]
    assert d.x_test[:, 0, 0, 0].tolist() == [102.0, 103.0, 104.0] and d.y_test.tolist() == [1, 0, 1]
    assert d.y_train.dtype == torch.int64 and d.x_train.shape == (4, 1, 2, 3)
    assert torch.equal(d.x_train[0], torch.full((1, 2, 3), 1.0))
    swapped = family.data(family.tasks[1])  # "1-0"
    assert swapped.x_train[:, 0, 0, 0].tolist() == [0.0, 1.0, 3.0, 5.0, 6.0, 8.0]
    assert swapped.y_train.tolist() == [1, 0, 0, 1, 0, 1]
    assert swapped.y_test.tolist() == [1, 0, 0]


def test_task_data_is_cached_by_name(family):
    d = family.data(family.tasks[0])
    assert family.data(family.tasks[0]) is d
    assert family.data(Task("0-1", (1, 0))) is d  # the name is the key
    assert family.data(family.tasks[1]) is not d


def test_stacked_pads_with_zeros_to_the_longest_task(family):
    x, y, counts = family.stacked([family.tasks[2], family.tasks[0]])  # train by default
    assert counts.tolist() == [3, 6]
    assert x.shape == (2, 6, 1, 2, 3) and x.dtype == torch.float32
    assert x[:, :, 0, 0, 0].tolist() == [[2.0, 4.0, 7.0, 0.0, 0.0, 0.0], [0.0, 1.0, 3.0, 5.0, 6.0, 8.0]]
    assert (x[0, 3:] == 0).all() and torch.equal(x[1, 4], torch.full((1, 2, 3), 6.0))
    assert y.dtype == torch.int64 and y.tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0]]
    x, y, counts = family.stacked([family.tasks[0], family.tasks[2]], "test")
    assert counts.tolist() == [3, 2]
    assert x[:, :, 0, 0, 0].tolist() == [[101.0, 102.0, 104.0], [100.0, 103.0, 0.0]]
    assert y.tolist() == [[0, 1, 1], [0, 1, 0]]
    x, y, counts = family.stacked([family.tasks[3]], "test")  # one task
    assert counts.tolist() == [3] and x.shape == (1, 3, 1, 2, 3) and y.tolist() == [[1, 0, 1]]


def test_evidence_is_the_flat_input_and_the_one_hot_label():
    x = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], dtype=torch.int32)  # (n=2, 2, 2)
    y = torch.tensor([2, 0])
    e = evidence(x, y, 3)
    assert e.dtype == torch.int32  # the inputs' dtype
    assert e.tolist() == [[1, 2, 3, 4, 0, 0, 1], [5, 6, 7, 8, 1, 0, 0]]
    batched = evidence(x.unsqueeze(0).double().expand(3, -1, -1, -1), y.expand(3, -1), 4)
    assert batched.shape == (3, 2, 8) and batched.dtype == torch.float64
    assert batched[2, 1].tolist() == [5, 6, 7, 8, 1, 0, 0, 0]


def test_support_draws_by_the_generators_numbers(family):
    x, y, counts = family.stacked(family.tasks)  # counts 6, 6, 3, 4
    rows = torch.tensor([2, 0, 3])
    s = support(x, y, counts, rows, 5, torch.Generator().manual_seed(7), 2)
    u = torch.rand((3, 5), generator=torch.Generator().manual_seed(7))
    idx = (u * torch.tensor([[3.0], [6.0], [4.0]])).long()
    assert s.shape == (3, 5, 6 + 2)
    for r, t in enumerate(rows.tolist()):
        assert torch.equal(s[r], evidence(x[t, idx[r]], y[t, idx[r]], 2))
        assert s[r, :, 0].tolist() == x[t, idx[r], 0, 0, 0].tolist()
    assert set(s[0, :, 0].tolist()) <= {2.0, 4.0, 7.0}


def test_fixed_support_draws_each_task_by_its_own_seed(family):
    x, y, counts = family.stacked(family.tasks)
    out = fixed_support(x, y, counts, 4, [5, 6, 7, 8], 2)
    assert out.shape == (4, 4, 8)
    for i, s in enumerate([5, 6, 7, 8]):
        ref = support(x, y, counts, torch.tensor([i]), 4, torch.Generator().manual_seed(s), 2)
        assert torch.equal(out[i:i + 1], ref)
    with pytest.raises(ValueError) as e:
        fixed_support(x, y, counts, 4, [5, 6], 2)
    assert str(e.value) == "fixed_support: one seed per task is needed (4), got 2"
