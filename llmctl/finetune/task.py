"""The fine-tuning task on the shared loop: shuffled epochs of examples, packed without padding.
Methods with another objective (DPO, distillation) subclass it and keep its batching."""

from __future__ import annotations

import torch

from llmctl.errors import UsageError
from llmctl.finetune.tokenize import IGNORE, Tokenized, pack
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

    def check(self, world: int) -> None:
        per_step = self.cfg.batch_size * self.cfg.grad_accum * world
        if per_step > len(self.train):
            raise UsageError(f"one step takes {per_step} examples (--batch-size {self.cfg.batch_size} x --grad-accum "
                             f"{self.cfg.grad_accum} x {world} process(es)) but the training split has "
                             f"{len(self.train)}", hint="lower --grad-accum or --batch-size, or add data")

    # Divide the loss by the step's learned tokens (see training.task.lm_loss); DPO's loss is per pair.
    weigh_tokens = True

    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        bs, parts = self.cfg.batch_size, self.cfg.grad_accum * world
        first = step * bs * parts
        start = first + (micro * world + rank) * bs
        batch = self.collate([self._example(p) for p in range(start, start + bs)])
        if self.weigh_tokens:
            learned = sum(sum(label != IGNORE for label in self._example(p).labels[1:])
                          for p in range(first, first + bs * parts))
            batch["loss_tokens"] = torch.tensor(learned / parts)
        return batch

    def eval_batches(self, rank: int, world: int):
        bs = self.cfg.batch_size
        for start in range(rank * bs, len(self.val), bs * world):
            yield self.collate(self.val[start:start + bs])
