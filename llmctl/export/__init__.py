"""`llmctl export`: models out of llmctl as one GGUF file (llama.cpp, ollama, LM Studio), checked by a round trip."""
