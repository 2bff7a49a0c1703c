"""Training data that llmctl makes: self-instruct generation, distillation sets, preference pairs."""
