"""Level 2: adjust a model for a task with LoRA (peft), on the same training loop as pretraining."""
