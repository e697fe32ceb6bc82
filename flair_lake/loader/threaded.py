"""A loader whose workers are threads of the training process.

Decoding (zarrs, numcodecs) and stacking release the GIL, so on a small machine threads decode in parallel
without the inter-process path of DataLoader workers (copy into shared memory, unpickle, map) that costs more
than the decode itself on 2 cores (docs/benchmarks.md, loader). Batches come in sampler order.
"""

from __future__ import annotations

import collections
import itertools
from concurrent.futures import ThreadPoolExecutor

import torch


class ThreadedLoader:
    """Iterate batches of ``dataset`` for the index lists of ``batch_sampler``, decoded by ``threads`` threads.

    Exposes ``dataset``, ``batch_sampler`` and ``num_workers`` like a DataLoader.
    """

    def __init__(self, dataset, batch_sampler, collate_fn, *, threads: int = 2, prefetch: int = 2,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.num_workers, self.prefetch, self.pin_memory = threads, prefetch, pin_memory

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _load(self, indices):
        batch = self.collate_fn(self.dataset.__getitems__(indices))
        if self.pin_memory:
            batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch

    def __iter__(self):
        it = iter(self.batch_sampler)
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="flair-lake-loader") as pool:
            pending = collections.deque(pool.submit(self._load, idx)
                                        for idx in itertools.islice(it, self.num_workers * self.prefetch))
            while pending:
                batch = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))
                yield batch
