"""trainables/batches.py: a split's mini-batches, resident on the device or copied from host
memory: the sizes (a partial last batch), the rows in the order asked for, the same batches
either way, and the host side's two staging buffers taking turns."""

from __future__ import annotations

import numpy as np
import torch

from trainables.batches import InHostMemory, OnDevice, place

CPU = torch.device("cpu")


def split(rows: int = 35) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), np.arange(rows)


def test_host_batches_are_the_device_batches() -> None:
    x, y = split()
    on_device, in_host = OnDevice(x, y, CPU), InHostMemory(x, y, CPU)
    order = torch.randperm(35, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the staging buffers are reused across passes
        for batches in ((8, order), (8, None), (50, order), (4, order[:10])):
            got = [(bx.clone(), by.clone()) for bx, by in in_host.batches(*batches)]
            want = list(on_device.batches(*batches))
            assert len(got) == len(want)
            for (gx, gy), (wx, wy) in zip(got, want, strict=True):
                assert torch.equal(gx, wx)
                assert torch.equal(gy, wy)
    assert [len(b) for b, _ in in_host.batches(8, order)] == [8, 8, 8, 8, 3]
    assert not in_host.pinned  # pinned staging is for CUDA copies only


def test_batches_in_stored_order_cover_the_split_once_with_a_partial_last() -> None:
    x, y = split()
    for data in (OnDevice(x, y, CPU), InHostMemory(x, y, CPU)):
        batches = [(bx.clone(), by.clone()) for bx, by in data.batches(8)]
        assert [len(by) for _, by in batches] == [8, 8, 8, 8, 3]
        assert torch.cat([by for _, by in batches]).tolist() == list(range(35))
        assert torch.equal(torch.cat([bx for bx, _ in batches]), torch.from_numpy(x))
        assert len(data) == 35


def test_batches_follow_the_order_given_and_only_its_rows() -> None:
    x, y = split()
    order = torch.tensor([34, 0, 17, 3, 3, 9, 1])
    for data in (OnDevice(x, y, CPU), InHostMemory(x, y, CPU)):
        batches = [(bx.clone(), by.clone()) for bx, by in data.batches(3, order)]
        assert [by.tolist() for _, by in batches] == [[34, 0, 17], [3, 3, 9], [1]]
        assert batches[0][0].tolist() == [[68.0, 69.0], [0.0, 1.0], [34.0, 35.0]]


def test_a_batch_size_over_the_split_gives_one_batch_of_every_row() -> None:
    x, y = split(5)
    for data in (OnDevice(x, y, CPU), InHostMemory(x, y, CPU)):
        ((bx, by),) = list(data.batches(64))
        assert by.tolist() == [0, 1, 2, 3, 4] and bx.shape == (5, 2)


def test_the_same_seeded_order_gives_the_same_batches() -> None:
    x, y = split()
    data = OnDevice(x, y, CPU)

    def labels(seed: int) -> list[list[int]]:
        order = torch.randperm(35, generator=torch.Generator().manual_seed(seed))
        return [by.tolist() for _, by in data.batches(8, order)]

    assert labels(4) == labels(4)
    assert labels(4) != labels(5)


def test_host_batches_take_turns_between_two_staging_buffers() -> None:
    """On CPU a batch is its staging buffer: the next batch writes the other one, the one after
    it the first again, so a batch must be used before the next-but-one is drawn."""
    x, y = split(24)
    batches = list(InHostMemory(x, y, CPU).batches(8))
    pointers = [bx.data_ptr() for bx, _ in batches]
    assert pointers[0] != pointers[1] and pointers[2] == pointers[0]
    assert batches[0][1].tolist() == list(range(16, 24))  # overwritten by the third batch


def test_inputs_keep_their_dtype_and_may_be_non_contiguous() -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)[:, ::-1]  # negative strides
    y = np.array([0.5, 1.5, 2.5, 3.5], dtype=np.float32)
    for data in (OnDevice(x, y, CPU), InHostMemory(x, y, CPU)):
        ((bx, by),) = [(a.clone(), b.clone()) for a, b in data.batches(4)]
        assert bx.dtype == torch.float64 and by.dtype == torch.float32
        assert bx[0].tolist() == [2.0, 1.0, 0.0]


def test_place_keeps_the_split_on_the_device_or_in_host_memory() -> None:
    x, y = split(6)
    resident, host = place(x, y, CPU, on_device=True), place(x, y, CPU, on_device=False)
    assert type(resident) is OnDevice and type(host) is InHostMemory
    assert len(resident) == len(host) == 6
