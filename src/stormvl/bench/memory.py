"""Peak memory of the tensors one answer allocates, on CUDA and on CPU."""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory:
    """Peak memory of the tensors allocated inside the block, above what was live when it began.

    On CUDA that is the caching allocator's own peak. On CPU, resident-set size cannot give it:
    glibc keeps freed pages, so a run after a larger one reuses them and reads as ~0 MiB. Instead a
    dispatch mode sees every aten op's outputs and tallies live storages (a storage counts until
    the last tensor using it is freed), which is the CPU analogue of the CUDA figure at op
    granularity (kernels' internal scratch buffers are not seen)."""

    def __init__(self, device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.mode = _LiveStorageTally()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.mode.__exit__(*exc)
            self.peak = self.mode.peak

    @property
    def mib(self):
        return self.peak / 2**20


class _LiveStorageTally(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = {}  # data_ptr -> (weak ref to the storage, bytes)
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Storages freed since the last op no longer count; this op's inputs are still alive.
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        # An output sharing an input's storage (a view, an in-place op) allocated nothing; this
        # also keeps views of tensors made before the block (weights) out of the tally.
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.live and key not in inputs:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        return out
