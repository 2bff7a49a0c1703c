"""Sentence embeddings from a local model: the mean of its last hidden states over the real (not
padding) tokens, L2-normalised, so a dot product is a cosine similarity."""

from __future__ import annotations

import base64
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from llmctl.errors import UsageError

MAX_INPUTS = 256  # one request's texts; they are embedded in batches of BATCH
BATCH = 16


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int

    def encoded(self, encoding_format: str) -> list:
        """The vectors as floats, or as base64 of little-endian float32 (OpenAI's compact form)."""
        if encoding_format == "float":
            return self.vectors
        return [base64.b64encode(torch.tensor(v, dtype=torch.float32).numpy().astype("<f4").tobytes()).decode()
                for v in self.vectors]


def check_inputs(texts) -> list[str]:
    """A string or a non-empty list of non-empty strings; anything else is a UsageError."""
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise UsageError("'input' must be a string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise UsageError(f"at most {MAX_INPUTS} inputs per request, got {len(texts)}")
    if any(not t for t in texts):
        raise UsageError("an input is empty")
    return texts


@torch.inference_mode()
def embed(backend, texts, lock: threading.Lock | None = None) -> Embeddings:
    """Embed texts with a local backend (an HFBackend); `lock` keeps the forward passes off the model
    while a server's batcher uses it."""
    if not backend.capabilities.embeddings:
        raise UsageError(f"'{backend.name}' cannot make embeddings: it is a remote model",
                         hint="use a local model (smollm2, a Hub repo, a model directory, an adapter)")
    texts = check_inputs(texts)
    tok = backend.tokenizer
    encoded = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    for i, ids in enumerate(encoded):
        if len(ids) > backend.context_length:
            raise UsageError(f"input {i} is {len(ids)} tokens; {backend.name} takes at most {backend.context_length}")
    vectors = []
    for start in range(0, len(encoded), BATCH):
        vectors += _embed_batch(backend, encoded[start:start + BATCH], lock)
    return Embeddings(vectors, sum(len(ids) for ids in encoded))


def _embed_batch(backend, encoded: list[list[int]], lock) -> list[list[float]]:
    longest = max(len(ids) for ids in encoded)
    # Right padding: positions count from 0 in every row, as for a text alone.
    ids = torch.tensor([x + [backend.pad_id] * (longest - len(x)) for x in encoded], device=backend.device)
    mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in encoded], device=backend.device)
    extra = {"adapter_names": [backend.adapter_name] * len(encoded)} if backend.adapter_name else {}
    with lock or nullcontext():
        out = backend.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False,
                            logits_to_keep=1, **extra)
    hidden = out.hidden_states[-1].float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1).cpu().tolist()
