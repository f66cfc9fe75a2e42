"""pdiff_fast.distributed's helpers as one rank of a faked process group (no processes started):
what each helper sends, what it makes of what the other ranks send, and when it does nothing.
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md);
tests/test_distributed.py runs the same helpers in real two-process gloo jobs."""
import datetime
import json

import pytest
import torch

from pdiff_fast import distributed


class FakeGroup:
    """torch.distributed as rank `rank` of `world` sees it. What the other ranks contribute:
    `others(kind, mine)` -> the tensors of every rank for an all_gather (mine at my place), the
    rank-0 tensor for a broadcast on another rank, the sum of the others' for an all_reduce."""

    def __init__(self, rank=0, world=2, backend="gloo", others=None, initialized=True):
        self.rank, self.world, self.backend, self.others = rank, world, backend, others
        self.initialized, self.calls = initialized, []

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def get_world_size(self):
        return self.world

    def get_rank(self):
        return self.rank

    def get_backend(self):
        return self.backend

    def barrier(self):
        self.calls.append("barrier")

    def all_gather(self, parts, mine):
        self.calls.append(("all_gather", mine.clone()))
        assert len(parts) == self.world and all(p.shape == mine.shape and p.dtype == mine.dtype for p in parts)
        for r, t in enumerate(self.others("all_gather", mine)):
            parts[r].copy_(mine if r == self.rank else t)

    def broadcast(self, t, src):
        assert src == 0
        self.calls.append(("broadcast", t.clone()))
        if self.rank != 0:
            t.copy_(self.others("broadcast", t))

    def all_reduce(self, t):
        self.calls.append(("all_reduce", t.clone()))
        t += self.others("all_reduce", t)

    def init_process_group(self, backend, timeout):
        self.calls.append(("init", backend, timeout))
        self.initialized = True

    def destroy_process_group(self):
        self.calls.append("destroy")


@pytest.fixture
def group(monkeypatch):
    def make(**kw):
        g = FakeGroup(**kw)
        monkeypatch.setattr(distributed, "dist", g)
        return g
    return make


# --- who am I --------------------------------------------------------------------------------

def test_active_rank_and_world(group):
    g = group(rank=1, world=3)
    assert distributed.active() and distributed.rank() == 1 and distributed.world_size() == 3
    assert not distributed.is_main()
    g.rank = 0
    assert distributed.is_main()
    g.world = 1  # a group of one is no group
    assert not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0
    g.world, g.initialized = 3, False
    assert not distributed.active() and distributed.rank() == 0
    g.initialized = True
    g.is_available = lambda: False
    assert not distributed.active()


def test_launched_reads_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    for value, want in (("1", False), ("2", True), ("16", True), ("0", False)):
        monkeypatch.setenv("WORLD_SIZE", value)
        assert distributed.launched() is want


# --- joining ---------------------------------------------------------------------------------

def test_init_joins_the_gloo_group_for_cpu_once(group, monkeypatch):
    g = group(initialized=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.init(torch.device("cpu"), timeout_s=7) == torch.device("cpu")
    assert g.calls == [("init", "gloo", datetime.timedelta(seconds=7))]
    distributed.init(torch.device("cpu"))  # already joined
    assert len(g.calls) == 1
    g.initialized = False
    distributed.init(torch.device("cpu"))
    assert g.calls[-1] == ("init", "gloo", datetime.timedelta(seconds=1800))


def test_init_takes_the_local_rank_gpu_and_nccl(group, monkeypatch):
    g = group(initialized=False)
    current = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert distributed.init(torch.device("cuda")) == torch.device("cuda", 2)
    assert current == [torch.device("cuda", 2)] and g.calls == [("init", "nccl", datetime.timedelta(seconds=1800))]
    monkeypatch.delenv("LOCAL_RANK")  # no LOCAL_RANK: the first GPU
    g.initialized = False
    assert distributed.init(torch.device("cuda", 1)) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match=r"^torchrun started process 3 of this machine, which has 3 GPU\(s\): one "
                                         r"process per GPU \(--nproc_per_node\), or --device cpu$"):
        distributed.init(torch.device("cuda"))


def test_init_without_a_launcher_does_nothing(group, monkeypatch):
    g = group(initialized=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init(torch.device("cuda", 1)) == torch.device("cuda", 1) and g.calls == []


# --- waiting and leaving ---------------------------------------------------------------------

def test_barrier_on_main_and_shutdown(group):
    g = group(rank=1)
    distributed.barrier()
    assert g.calls == ["barrier"]
    ran = []
    assert distributed.on_main(lambda: ran.append(1) or "out") is None and ran == []  # not rank 0
    assert g.calls == ["barrier", "barrier"]  # but it waits for rank 0's write
    g.rank = 0
    assert distributed.on_main(lambda: ran.append(1) or "out") == "out" and ran == [1]
    assert g.calls[-1] == "barrier"
    distributed.shutdown()
    assert g.calls[-2:] == ["barrier", "destroy"]
    g.world, g.calls = 1, []
    distributed.barrier()
    distributed.shutdown()
    assert g.calls == []


# --- sharding --------------------------------------------------------------------------------

def test_shard_by_hand(group):
    assert distributed.shard(10, 1, rank_=0, world=3) == (0, 3)
    assert distributed.shard(10, 1, rank_=1, world=3) == (3, 6)
    assert distributed.shard(10, 1, rank_=2, world=3) == (6, 10)
    assert distributed.shard(10, 4, rank_=0, world=2) == (0, 4)  # 3 blocks: 1 and 2
    assert distributed.shard(10, 4, rank_=1, world=2) == (4, 10)
    assert distributed.shard(3, 4, rank_=0, world=2) == (0, 0)  # one block: rank 0 gets none
    assert distributed.shard(3, 4, rank_=1, world=2) == (0, 3)
    assert distributed.shard(7) == (0, 7)  # one process: all
    group(rank=1, world=2)
    assert distributed.shard(7) == (3, 7) and distributed.shard(7, 2) == (4, 7)
    assert distributed.shard(7, rank_=0) == (0, 3) and distributed.shard(7, rank_=1, world=3) == (2, 4)


# --- gathering -------------------------------------------------------------------------------

def gathered_from(rows_of_rank):
    """others() for all_gather: rank r's rows (rows_of_rank[r]) padded to the sent shape, as that rank pads."""
    def others(kind, mine):
        out = []
        for rows in rows_of_rank:
            t = torch.zeros_like(mine)
            t[:rows.shape[0]] = rows.to(mine.dtype)
            out.append(t)
        return out
    return others


def test_gather_rows_with_known_shards(group):
    full = torch.arange(14.0).view(7, 2) * 0.5 - 3  # fractions and negatives: a byte would not carry them
    shards = [full[slice(*distributed.shard(7, 2, rank_=r, world=2))] for r in range(2)]
    assert [s.shape[0] for s in shards] == [4, 3]  # two blocks of 2, then a block and a half
    g = group(rank=1, world=2, others=gathered_from(shards))
    out = distributed.gather_rows(shards[1], 7, 2)
    assert torch.equal(out, full) and out.dtype == full.dtype
    (kind, sent), = g.calls
    assert kind == "all_gather" and sent.shape == (4, 2)  # padded to the longest share
    assert torch.equal(sent[:3], shards[1]) and torch.equal(sent[3:], torch.zeros(1, 2))
    assert sent.dtype == torch.float32


def test_gather_rows_deals_single_rows_by_default(group):
    full = torch.arange(7.0)  # blocks of 1 over 2 ranks: 3 and 4 rows (blocks of 2 would be 4 and 3)
    group(rank=0, world=2, others=gathered_from([full[:3], full[3:]]))
    assert torch.equal(distributed.gather_rows(full[:3], 7), full)


def test_gather_rows_with_unknown_counts_gathers_them_first(group):
    mine, theirs = torch.tensor([[1, 2]]), torch.tensor([[3, 4], [5, 6], [7, 8]])

    def others(kind, t):
        if t.dtype == torch.int64 and t.shape == (1,):  # the counts
            return [torch.tensor([1]), torch.tensor([3])]
        return gathered_from([mine, theirs])(kind, t)
    g = group(rank=0, world=2, others=others)
    out = distributed.gather_rows(mine)
    assert torch.equal(out, torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])) and out.dtype == torch.int64
    assert torch.equal(g.calls[0][1], torch.tensor([1])) and g.calls[1][1].shape == (3, 2)


def test_gather_rows_sends_bool_as_uint8(group):
    mine, theirs = torch.tensor([True, False, True]), torch.tensor([False, True])
    g = group(rank=1, world=2, others=gathered_from([theirs, mine]))  # I am rank 1: rows 2..4 of 5
    out = distributed.gather_rows(mine, 5)
    assert out.dtype == torch.bool and out.tolist() == [False, True, True, False, True]
    assert g.calls[0][1].dtype == torch.uint8


def test_comm_device_follows_the_backend(group, monkeypatch):
    group(backend="gloo")
    assert distributed._comm_device() == torch.device("cpu")
    group(backend="nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed._comm_device() == torch.device("cuda", 3)


def test_all_ints_and_sum_int(group):
    g = group(rank=1, world=3, others=lambda kind, t: [torch.tensor([5]), None, torch.tensor([-2])])
    assert distributed._all_ints(4) == [5, 4, -2]
    assert torch.equal(g.calls[0][1], torch.tensor([4])) and g.calls[0][1].dtype == torch.int64
    assert distributed.sum_int(4) == 7
    g.world = 1
    assert distributed.sum_int(4) == 4 and len(g.calls) == 2


# --- broadcasting ----------------------------------------------------------------------------

def test_broadcast_json_from_rank_0(group):
    obj = {"digest": "abc", "n": [1, 2.5], "none": None}
    g = group(rank=0)
    assert distributed.broadcast_json(obj) == obj
    (_, size), (_, data) = g.calls
    text = json.dumps(obj).encode()
    assert size.tolist() == [len(text)] and size.dtype == torch.int64 and bytes(data.tolist()) == text


def test_broadcast_json_on_another_rank_takes_rank_0s(group):
    text = json.dumps(["rank", 0]).encode()
    sent = iter([torch.tensor([len(text)]), torch.tensor(list(text), dtype=torch.uint8)])
    g = group(rank=1, others=lambda kind, t: next(sent))
    assert distributed.broadcast_json({"mine": "ignored"}) == ["rank", 0]
    assert g.calls[1][1].shape == (len(text),) and g.calls[1][1].dtype == torch.uint8
    group(world=1)
    assert distributed.broadcast_json({"a": 1}) == {"a": 1}


def test_broadcast_tensors_from_rank_0_returns_its_own(group):
    tensors = {"w": torch.randn(2, 3), "mask": torch.tensor([True, False]), "n": torch.tensor(7)}
    g = group(rank=0)
    assert distributed.broadcast_tensors(tensors) is tensors
    header = json.loads(bytes(g.calls[1][1].tolist()))
    assert header == [["w", [2, 3], "float32", "cpu"], ["mask", [2], "bool", "cpu"], ["n", [], "int64", "cpu"]]
    assert torch.equal(g.calls[2][1], tensors["w"]) and g.calls[3][1].dtype == torch.uint8
    assert g.calls[3][1].tolist() == [1, 0] and torch.equal(g.calls[4][1], tensors["n"])


def test_broadcast_tensors_on_another_rank_builds_them_from_the_header(group):
    header = json.dumps([["w", [2, 2], "float64", "cpu"], ["mask", [3], "bool", "cpu"]]).encode()
    sent = iter([torch.tensor([len(header)]), torch.tensor(list(header), dtype=torch.uint8),
                 torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), torch.tensor([0, 1, 1], dtype=torch.uint8)])
    group(rank=1, others=lambda kind, t: next(sent))
    out = distributed.broadcast_tensors(None)
    assert out["w"].dtype == torch.float64 and out["w"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert out["mask"].dtype == torch.bool and out["mask"].tolist() == [False, True, True]
    assert out["w"].device.type == "cpu"
    group(world=1)
    mine = {"a": torch.zeros(1)}
    assert distributed.broadcast_tensors(mine) is mine


def test_broadcast_tensors_puts_a_gpu_tensor_of_rank_0_on_this_ranks_gpu(group, monkeypatch):
    header = json.dumps([["w", [2], "float32", "cuda"]]).encode()
    sent = iter([torch.tensor([len(header)]), torch.tensor(list(header), dtype=torch.uint8), torch.tensor([1.0, 2.0])])
    group(rank=1, others=lambda kind, t: next(sent))
    if torch.cuda.is_available():
        out = distributed.broadcast_tensors(None)
        assert out["w"].device == torch.device("cuda", torch.cuda.current_device())
    else:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):  # it asked for cuda:0
            distributed.broadcast_tensors(None)


def test_broadcast_tensors_sends_non_contiguous_tensors_whole(group):
    t = torch.arange(6.0).view(2, 3).T  # not contiguous
    g = group(rank=0)
    distributed.broadcast_tensors({"t": t})
    assert torch.equal(g.calls[2][1], t) and g.calls[2][1].shape == (3, 2)


# --- reducing --------------------------------------------------------------------------------

def test_all_mean(group):
    g = group(rank=0, world=4, others=lambda kind, t: torch.full_like(t, 6.0))  # the other 3 ranks: 2 each
    t = torch.tensor([2.0, -2.0], requires_grad=True)
    out = distributed.all_mean(t)
    assert out.tolist() == [2.0, 1.0] and not out.requires_grad  # ([2, -2] + 3 x 2) / 4 and out.device == t.device
    assert t.tolist() == [2.0, -2.0]  # reduced on a copy
    assert torch.equal(g.calls[0][1], torch.tensor([2.0, -2.0]))
    g.world = 1
    assert distributed.all_mean(t) is t
