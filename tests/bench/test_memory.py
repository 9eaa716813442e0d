import torch

from stormvl.bench.memory import PeakMemory


def test_peak_memory_counts_live_tensors_exactly():
    mib = 2**20
    keep = torch.ones(mib // 4)  # allocated before the block: not counted
    with PeakMemory(torch.device("cpu")) as mem:
        a = torch.zeros(2 * mib // 4)  # 2 MiB live
        b = a + 1  # 4 MiB live
        v = b[:10]  # a view: no new storage
        w = keep.view(2, -1).t()  # a view of a tensor made before the block: nothing
        del a
        c = torch.zeros(3 * mib // 4)  # 2 + 3 = 5 MiB live: the peak
        del b, v, w, c
        d = torch.zeros(mib // 4)  # 1 MiB: below the peak
    assert mem.peak == 5 * mib
    # A second block after the memory was freed still sees its own allocations (RSS would not).
    with PeakMemory(torch.device("cpu")) as again:
        e = keep * 2
    assert again.peak == mib
    del d, e
