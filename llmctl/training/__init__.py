"""The one training loop shared by pretrain and finetune: checkpoints, exact resume, eval, progress."""
