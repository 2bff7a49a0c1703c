"""Local Hugging Face models: a Hub repo, a model directory, a pretrained GPT, or base + LoRA adapter.

Generation is our own short decoding loop over the model's KV cache (hf_decode.py) rather than
`generate()`: it batches concurrent server requests, and gives a per-request random generator (reproducible --seed), streaming without a thread, stop
strings, the per-token distribution for --top-probs, and a clean stop on Ctrl-C.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Iterator

import torch

from llmctl.backends.base import Backend, Chunk, GenerationRequest, RenderedPrompt, TokenInfo, TokenProb
from llmctl.config import Config
from llmctl.errors import ModelError, UsageError
from llmctl.registry import ModelEntry, Registry
from llmctl.backends.hf_decode import DecodeRow, decode_rows
from llmctl.templates import NAMED_TEMPLATES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("hf.device is 'cuda' but no CUDA device is available", hint="set hf.device to cpu or auto (llmctl config set hf.device auto, or LLMCTL_HF_DEVICE=auto)")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _is_offline(config: Config) -> bool:
    from llmctl.embedded import offline_requested

    return config.hf.offline or offline_requested()


def _quiet_transformers() -> None:
    """Our own spinner says what is loading; transformers' bars and warnings would bury it."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Deprecation notices from inside transformers/peft are for their authors, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def _load_pretrained(source: str, config: Config, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        # use_safetensors: never unpickle weights from outside (a .bin can run arbitrary code).
        return AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=config.hf.trust_remote_code)
    except (OSError, ValueError, EnvironmentError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model from '{source}': {reason}",
                         hint="check the name or path; Hub models need network access (or run once online)") from None


def _load_tokenizer(sources: list[str], config: Config):
    from transformers import AutoTokenizer

    last: Exception | None = None
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=config.hf.trust_remote_code)
        except (OSError, ValueError) as e:
            last = e
    raise ModelError(f"cannot load a tokenizer from {' or '.join(sources)}: {last}")


class HFBackend(Backend):
    def __init__(self, entry: ModelEntry, model, tokenizer, device: torch.device, origin: str):
        self.entry = entry
        self.name = entry.name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.origin = origin  # where the weights came from, for `models show` and --json
        template = entry.chat_template
        if template in NAMED_TEMPLATES:
            tokenizer.chat_template = NAMED_TEMPLATES[template]
        elif template not in ("auto", "none"):
            tokenizer.chat_template = template
        self.has_template = template != "none" and bool(getattr(tokenizer, "chat_template", None))
        self.context_length = entry.context_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.eos_ids = self._eos_ids()

    @classmethod
    def load(cls, entry: ModelEntry, config: Config) -> "HFBackend":
        from llmctl.embedded import locate_weights

        start = time.perf_counter()
        _quiet_transformers()
        device = pick_device(config.hf.device)
        dtype = pick_dtype(config.hf.dtype, device)
        if entry.adapter:
            source, origin = locate_weights(Registry().base_of(entry).source, offline=_is_offline(config))
            model = attach_adapter(_load_pretrained(source, config, dtype), entry.adapter)
            tokenizer = _load_tokenizer([entry.adapter, source], config)
            origin = f"{origin} + adapter {entry.adapter}"
        else:
            source, origin = locate_weights(entry.source, offline=_is_offline(config))
            model = _load_pretrained(source, config, dtype)
            tokenizer = _load_tokenizer([source], config)
        model.to(device).eval()
        backend = cls(entry, model, tokenizer, device, origin)
        backend.load_seconds = time.perf_counter() - start
        return backend

    def _eos_ids(self) -> set[int]:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- prompts ---------------------------------------------------------------------------------
    def is_chat(self, request: GenerationRequest) -> bool:
        return self.has_template and not request.raw

    def _prompt_text(self, request: GenerationRequest) -> str:
        if self.is_chat(request):
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(m.content for m in request.messages)

    def _encode(self, request: GenerationRequest) -> tuple[str, list[int]]:
        text = self._prompt_text(request)
        # A chat template writes its own special tokens (BOS included); raw text gets the defaults.
        ids = self.tokenizer(text, add_special_tokens=not self.is_chat(request))["input_ids"]
        return text, list(ids)

    def render(self, request: GenerationRequest) -> RenderedPrompt:
        text, ids = self._encode(request)
        return RenderedPrompt(text=text, tokens=len(ids), mode="chat" if self.is_chat(request) else "completion")

    # -- generation ------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        _, prompt_ids = self._encode(request)
        return self._decode(prompt_ids, request, self._room(prompt_ids, request))

    def _room(self, prompt_ids: list[int], request: GenerationRequest) -> int:
        """How many tokens this request may generate; an empty or too-long prompt is an error."""
        if not prompt_ids:
            raise UsageError("the prompt is empty after tokenization")
        room = self.context_length - len(prompt_ids)
        if room <= 0:
            raise UsageError(f"the prompt is {len(prompt_ids)} tokens but {self.name} has a context of "
                             f"{self.context_length}", hint="shorten the prompt or history (--no-continue)")
        return min(request.params.max_tokens, room)

    def _decode(self, prompt_ids: list[int], request: GenerationRequest, max_new: int) -> Iterator[Chunk]:
        row = DecodeRow(prompt_ids, request, max_new, self.tokenizer)
        for _, chunk in decode_rows(self.model, [row], self.device, self.pad_id, self.eos_ids, self._token_info):
            yield chunk

    # -- batching (used by `llmctl serve` for concurrent requests) -------------------------------
    supports_batching = True

    def prepare_row(self, request: GenerationRequest, cancelled=lambda: False) -> DecodeRow:
        """Check and encode a request for `decode_batch`; a bad request fails here, before it is queued."""
        _, prompt_ids = self._encode(request)
        max_new = self._room(prompt_ids, request)
        return DecodeRow(prompt_ids, request, max_new, self.tokenizer, cancelled)

    def decode_batch(self, rows: list[DecodeRow]) -> Iterator[tuple[int, Chunk]]:
        return decode_rows(self.model, rows, self.device, self.pad_id, self.eos_ids, self._token_info)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.pad_token_id, tok.eos_token_id, *sorted(self.eos_ids)):
            if isinstance(value, int):
                return value
        return 0

    def _token_info(self, logits: torch.Tensor, temperature: float, token: int, k: int) -> TokenInfo:
        probs = torch.softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        top = torch.topk(probs, min(k, probs.numel()))
        return TokenInfo(token=self._token_text(token), prob=float(probs[token]),
                         top=[TokenProb(self._token_text(int(i)), float(v)) for v, i in zip(top.values, top.indices)])

    def _token_text(self, token_id: int) -> str:
        """A token as text; a byte fragment of a longer character shows as its vocabulary entry."""
        text = self.tokenizer.decode([token_id])
        return text if "\ufffd" not in text else str(self.tokenizer.convert_ids_to_tokens(token_id))

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def attach_adapter(model, adapter_dir: str, trainable: bool = False):
    """`model` with the peft adapter in `adapter_dir` on top (trainable: to fine-tune it further)."""
    from peft import PeftModel

    if not Path(adapter_dir, "adapter_config.json").is_file():
        raise ModelError(f"adapter directory {adapter_dir} has no adapter_config.json")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load adapter {adapter_dir}: {str(e).splitlines()[0]}") from None
