"""The round trip: a written GGUF file loaded back and compared with the model it came from.

Checked every time: the tokenizer (ids of a text with accents, emoji and code, and of a formatted chat),
the chat template (the same text for the same chat) and the special tokens. Then, by storage type: f32
must give the same logits (largest difference at most F32_LOGIT_TOLERANCE); f16/bf16 the same greedy
continuations; a quantized file a perplexity on SAMPLE_TEXT within PPL_TOLERANCE of the source's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmctl.errors import EXIT_GATE, LlmctlError

F32_LOGIT_TOLERANCE = 1e-3
# Perplexity of the export over the source's, at most 1 + this: what rounding may honestly cost a small
# model, while a broken layout or tokenizer makes it answer garbage. SmolLM2-135M (bench/export.py)
# loses 0.2% at q8_0 and 27% at q4_0; its weights are themselves de-quantized Q4_1 (the embedded GGUF), which
# makes q4_1 lossless for it and q5_0/q5_1 cost 10%/18%. Larger models lose less.
PPL_TOLERANCE = {"q8_0": 0.02, "q5_1": 0.25, "q5_0": 0.25, "q4_1": 0.35, "q4_0": 0.35}
GREEDY_TOKENS = 16

TOKENIZER_PROBE = ("Crème brûlée, naïve façade, Ærøskøbing, 日本語 and ñandú 🦙🚀👩‍💻!\n"
                   "```python\ndef area(r: float) -> float:\n\treturn 3.14159 * r ** 2  # 100% {ok}\n```")
CHAT_PROBE = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Ça va? 🙂"},
]
PROMPTS = ["What is the capital of France?", "Write a Python function that adds two numbers."]
SAMPLE_TEXT = (  # the shipped text for perplexity: prose, a dialogue and code, as small models see them
    "The Eiffel Tower is located in Paris, the capital of France. It was built for the World's Fair of 1889 "
    "and was the tallest structure in the world for forty-one years. Today millions of visitors climb it "
    "every year to look out over the city and the river Seine.\n\n"
    "Question: What is the largest planet in the solar system?\nAnswer: Jupiter is the largest planet in the "
    "solar system. It is a gas giant with a mass more than twice that of all the other planets combined.\n\n"
    "Language models read text as tokens and learn to predict the next token from the tokens before it. "
    "A small model can run on a laptop, answer simple questions and follow short instructions.\n\n"
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])\n"
)


class RoundTripFailed(LlmctlError):
    """The exported file does not behave like its source; it is kept, renamed, for inspection. The exit code
    is the one of every check whose output is kept (an eval gate too): 6."""

    exit_code = EXIT_GATE


@dataclass
class RoundTrip:
    loader: str
    quant: str
    tokenizer_equal: bool
    template_equal: bool | None  # None: a base model, no template to compare
    specials_equal: bool
    max_logit_diff: float
    greedy_equal: bool
    ppl_source: float
    ppl_export: float
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_export / self.ppl_source

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_ratio": round(self.ppl_ratio, 5), "passed": self.passed,
                "ppl_tolerance": PPL_TOLERANCE.get(self.quant), "f32_logit_tolerance": F32_LOGIT_TOLERANCE}


def verify_round_trip(model, tokenizer, path: Path, quant: str, chat: bool) -> RoundTrip:
    """Load `path` back and compare it with `model`/`tokenizer` (the source, float32, eval mode)."""
    from llmctl.export.reader import load_gguf

    start = time.perf_counter()
    loaded = load_gguf(path)
    back, back_tok = loaded.model, loaded.tokenizer
    continuations = [_continuation(model, back, _prompt_ids(tokenizer, p, chat)) for p in PROMPTS]
    text_ids = _ids(tokenizer, SAMPLE_TEXT)[: _context(model)]
    result = RoundTrip(
        loader=loaded.loader, quant=quant,
        tokenizer_equal=_tokenizer_equal(tokenizer, back_tok, chat),
        template_equal=_template_equal(tokenizer, back_tok) if chat else None,
        specials_equal=_specials(tokenizer) == _specials(back_tok),
        max_logit_diff=max(diff for diff, _ in continuations), greedy_equal=all(same for _, same in continuations),
        ppl_source=_perplexity(model, text_ids), ppl_export=_perplexity(back, text_ids))
    result.failures = _failures(result)
    result.seconds = round(time.perf_counter() - start, 2)
    del loaded, back
    return result


def _failures(r: RoundTrip) -> list[str]:
    failures = []
    if not r.tokenizer_equal:
        failures.append("tokenizer ids differ")
    if r.template_equal is False:
        failures.append("chat template renders differently")
    if not r.specials_equal:
        failures.append("special tokens differ")
    if r.quant == "f32" and not r.max_logit_diff <= F32_LOGIT_TOLERANCE:
        failures.append(f"logits differ by {r.max_logit_diff:.3g} (f32 allows {F32_LOGIT_TOLERANCE:g})")
    if r.quant in ("f16", "bf16") and not r.greedy_equal:
        failures.append("greedy continuations differ")
    tolerance = PPL_TOLERANCE.get(r.quant)
    if tolerance is not None and not r.ppl_ratio <= 1 + tolerance:
        failures.append(f"perplexity {r.ppl_ratio:.4f}x the source's ({r.quant} allows {1 + tolerance:.2f}x)")
    return failures


# -- the comparisons -----------------------------------------------------------------------------

def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _render(tokenizer, messages, generation: bool = True) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:  # what `llmctl prompt` sends: the template's text, with no second BOS
        return tokenizer(_render(tokenizer, [{"role": "user", "content": prompt}]), add_special_tokens=False)["input_ids"]
    return _ids(tokenizer, prompt)


def _tokenizer_equal(source, back, chat: bool) -> bool:
    texts = [TOKENIZER_PROBE] + ([_render(source, CHAT_PROBE)] if chat else [])
    return all(_ids(source, t) == _ids(back, t) for t in texts) and source.decode(_ids(source, TOKENIZER_PROBE)) \
        == back.decode(_ids(back, TOKENIZER_PROBE))


def _template_equal(source, back) -> bool:
    if not getattr(back, "chat_template", None):
        return False
    without_system = CHAT_PROBE[1:]  # a template's default system prompt shows here
    return all(_render(source, chat) == _render(back, chat) for chat in (CHAT_PROBE, without_system))


def _specials(tokenizer) -> dict:
    return {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad", "unk")}


def _context(model) -> int:
    config = model.config
    return min(512, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 512))


def _logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _continuation(source, back, ids: list[int]) -> tuple[float, bool]:
    """(largest logit difference over the prompt and the source's greedy continuation, whether the export
    continues greedily the same way). Both are read once over prompt + continuation: the export's argmax at
    every step equal to the source's is exactly "the same greedy continuation", computed alike on both sides."""
    full = ids + _greedy(source, ids)
    source_logits, back_logits = _logits(source, full), _logits(back, full)
    steps = slice(len(ids) - 1, len(full) - 1)
    same = source_logits[steps].argmax(-1).tolist() == back_logits[steps].argmax(-1).tolist()
    return float((source_logits - back_logits).abs().max()), same


def _greedy(model, ids: list[int]) -> list[int]:
    """Greedy continuation by our own loop (with the KV cache): the two models' generation settings
    must not make the results differ."""
    import torch

    from llmctl.backends.hf_decode import cache_argument

    name = cache_argument(model)  # `cache` in transformers 5, `past_key_values` before; the output names it alike
    steps = min(GREEDY_TOKENS, _context(model) - len(ids))
    chosen, past, step_ids = [], None, list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out = model(torch.tensor([step_ids]), use_cache=True, **{name: past})
            past = getattr(out, name)
            chosen.append(int(out.logits[0, -1].argmax()))
            step_ids = chosen[-1:]
    return chosen


def _perplexity(model, ids: list[int]) -> float:
    """From the logits, not the model's loss: a Mixtral's loss can include its router's auxiliary loss."""
    import torch

    logits = _logits(model, ids)
    return math.exp(float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))))
