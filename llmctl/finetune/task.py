"""The fine-tuning task on the shared loop: shuffled epochs of examples, packed without padding.
Methods with another objective (DPO, distillation) subclass it and keep its batching."""

from __future__ import annotations

import torch

from llmctl.finetune.tokenize import Tokenized, pack
from llmctl.training.config import TrainConfig
from llmctl.training.task import TrainTask


class FinetuneTask(TrainTask):
    """Shuffled epochs of examples, `batch_size` examples packed per micro-batch. The examples of
    step N depend only on (seed, N), and the global batch is the same for any number of processes."""

    collate = staticmethod(pack)  # DPO packs preference pairs instead

    def __init__(self, train: list[Tokenized], val: list[Tokenized], cfg: TrainConfig):
        self.train, self.val, self.cfg = train, val, cfg

    def _example(self, position: int) -> Tokenized:
        epoch, index = divmod(position, len(self.train))
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        return self.train[int(order[index])]

    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        bs = self.cfg.batch_size
        start = step * bs * self.cfg.grad_accum * world + (micro * world + rank) * bs
        return self.collate([self._example(p) for p in range(start, start + bs)])

    def eval_batches(self, rank: int, world: int):
        bs = self.cfg.batch_size
        for start in range(rank * bs, len(self.val), bs * world):
            yield self.collate(self.val[start:start + bs])
