"""Level 3: build your own GPT — corpus, tokenizer, token shards, model, self-supervised training."""
