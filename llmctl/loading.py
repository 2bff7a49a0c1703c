"""The one way a model reference becomes local weights and a tokenizer.

Prompting, serving, fine-tuning, distillation teachers, merging, evaluation, data inspection and
pretraining with a borrowed tokenizer all load through here, so every `hf.*` setting (device, dtype,
offline, trust_remote_code, attn_implementation) means the same everywhere, and weights are only ever
read from safetensors.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmctl.config import Config
from llmctl.errors import ModelError, UsageError
from llmctl.providers import require_local
from llmctl.registry import ModelEntry, Registry

if TYPE_CHECKING:
    import torch

# What happens to an adapter entry's adapter: attached for inference, folded into the base weights
# (one copy in memory), or left off so the caller can attach it to train it further.
AdapterMode = Literal["attach", "merge", "skip"]


@dataclass
class LocalModel:
    entry: ModelEntry
    model: Any
    tokenizer: Any
    device: "torch.device"
    origin: str  # where the weights came from, for `models show`, notes and --json
    load_seconds: float = 0.0


def default_config(config: Config | None) -> Config:
    """Python callers that pass no config get what the CLI would use: user, project and env settings."""
    if config is not None:
        return config
    from llmctl.config import resolve_config

    return resolve_config().config


def local_entry(ref: str | ModelEntry, doing: str, hint: str | None = None) -> ModelEntry:
    """The registry entry for `ref`, refused with one clear line if it has no local weights."""
    entry = Registry().resolve(ref) if isinstance(ref, str) else ref
    require_local(entry, doing, hint)
    return entry


def is_offline(config: Config) -> bool:
    from llmctl.embedded import offline_requested

    return config.hf.offline or offline_requested()


def quiet_transformers() -> None:
    """Our own spinner says what is loading; transformers' bars and warnings would bury it."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Deprecation notices from inside transformers/peft are for their authors, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def weights_source(entry: ModelEntry, config: Config) -> tuple[str, str]:
    """What to hand to `from_pretrained` for the entry's full weights (an adapter's base), and where
    they come from."""
    from llmctl.embedded import gguf_file_weights, is_gguf_file, locate_weights

    base = Registry().base_of(entry) if entry.adapter else entry
    if is_gguf_file(base.source):  # an exported (or downloaded) GGUF: converted once into the cache
        from llmctl.export.reader import load_gguf

        source, origin = gguf_file_weights(base.source, load_gguf)
    else:
        source, origin = locate_weights(base.source, offline=is_offline(config))
    return source, f"{origin} + adapter {entry.adapter}" if entry.adapter else origin


# -- settings -------------------------------------------------------------------------------------

def pick_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("hf.device is 'cuda' but no CUDA device is available",
                         hint="set hf.device to cpu or auto (llmctl config set hf.device auto, or LLMCTL_HF_DEVICE=auto)")
    return torch.device(name)


def pick_dtype(name: str, device: "torch.device") -> "torch.dtype":
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def attention_implementation(name: str, device: "torch.device", dtype: "torch.dtype") -> str | None:
    """The `attn_implementation` to ask transformers for; None lets it pick (SDPA where the model has it)."""
    import torch

    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if name == "flash_attention_2":
        if not flash_installed:
            raise UsageError("hf.attn_implementation is flash_attention_2 but the flash-attn package is not installed",
                             hint="pip install flash-attn (CUDA only), or set hf.attn_implementation to auto or sdpa")
        if device.type != "cuda":
            raise UsageError("flash_attention_2 runs only on CUDA GPUs", hint="set hf.attn_implementation to auto or sdpa")
        return name
    if name == "auto":
        half = dtype in (torch.float16, torch.bfloat16)
        return "flash_attention_2" if flash_installed and device.type == "cuda" and half else None
    return name


# -- loading --------------------------------------------------------------------------------------

def load_tokenizer(ref: str | ModelEntry, config: Config | None = None, doing: str = "a tokenizer"):
    """The tokenizer of a local model (an adapter's own first: it carries the chat template it was
    trained with), with the entry's chat template applied."""
    from llmctl.templates import apply_entry_template

    config = default_config(config)
    entry = local_entry(ref, doing)
    source, _ = weights_source(entry, config)
    tokenizer = _tokenizer_from([entry.adapter, source] if entry.adapter else [source], config)
    apply_entry_template(entry, tokenizer)
    return tokenizer


def load_model_config(ref: str | ModelEntry, config: Config | None = None):
    """The model's transformers config (shapes and sizes) without reading any weights."""
    from transformers import AutoConfig

    config = default_config(config)
    source, _ = weights_source(local_entry(ref, "reading a model's shape"), config)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=config.hf.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the model config from '{source}': {_first_line(e)}") from None


def load_local(ref: str | ModelEntry, config: Config | None = None, *, adapter: AdapterMode = "attach",
               place: bool = True, quantize_4bit: bool = False, doing: str = "loading weights") -> LocalModel:
    """Weights and tokenizer of a local model. `place` moves it to hf.device in eval mode (inference);
    training leaves it where it loaded, for accelerate to place. `quantize_4bit` loads the base in
    NF4 for QLoRA (CUDA + bitsandbytes)."""
    start = time.perf_counter()
    config = default_config(config)
    entry = local_entry(ref, doing)
    quiet_transformers()
    device = pick_device(config.hf.device)
    dtype = pick_dtype(config.hf.dtype, device)
    source, origin = weights_source(entry, config)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.hf.trust_remote_code}
    attention = attention_implementation(config.hf.attn_implementation, device, dtype)
    if attention:
        kwargs["attn_implementation"] = attention
    if quantize_4bit:
        kwargs["quantization_config"] = _nf4_config()
    model = _weights_from(source, kwargs)
    tokenizer = _tokenizer_from([entry.adapter, source] if entry.adapter else [source], config)
    from llmctl.templates import apply_entry_template

    apply_entry_template(entry, tokenizer)
    if entry.adapter and adapter != "skip":
        model = attach_adapter(model, entry.adapter)
        if adapter == "merge":
            import torch

            with torch.no_grad():  # merge_and_unload adds each delta into the base weights in place
                model = model.merge_and_unload()
    if place:
        model.to(device).eval()
    return LocalModel(entry, model, tokenizer, device, origin, time.perf_counter() - start)


def attach_adapter(model, adapter_dir: str, trainable: bool = False):
    """`model` with the peft adapter in `adapter_dir` on top (trainable: to fine-tune it further)."""
    from peft import PeftModel

    if not Path(adapter_dir, "adapter_config.json").is_file():
        raise ModelError(f"adapter directory {adapter_dir} has no adapter_config.json")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load adapter {adapter_dir}: {_first_line(e)}") from None


def _nf4_config():
    import torch

    if not torch.cuda.is_available():
        raise UsageError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none",
                         hint="drop --qlora: plain LoRA works on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("QLoRA needs bitsandbytes", hint="pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _weights_from(source: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    try:
        # use_safetensors: never unpickle weights from outside (a .bin can run arbitrary code).
        return AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelError(f"cannot load model from '{source}': {_first_line(e)}",
                         hint="check the name or path; Hub models need network access (or run once online)") from None
    except ImportError as e:  # an attention kernel or quantization library that is missing or broken
        raise UsageError(f"cannot load model from '{source}': {_first_line(e)}") from None


def _tokenizer_from(sources: list[str], config: Config):
    from transformers import AutoTokenizer

    last: Exception | None = None
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=config.hf.trust_remote_code)
        except (OSError, ValueError) as e:
            last = e
    raise ModelError(f"cannot load a tokenizer from {' or '.join(sources)}: {_first_line(last)}")


def _first_line(e: BaseException | None) -> str:
    text = str(e).strip() if e is not None else ""
    return text.splitlines()[0] if text else type(e).__name__
