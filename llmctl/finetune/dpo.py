"""Direct preference optimisation (Rafailov et al. 2023): preference pairs, their tokens, the loss,
the training task that runs it on the shared loop, and the fine-tuning method `--method dpo`.

Pairs are rendered exactly as LoRA fine-tuning renders examples (tokenize.encode), so the prompt
tokens are identical; a response's log-probability is the sum over its tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from llmctl.answering import checked_messages
from llmctl.errors import UsageError
from llmctl.finetune.config import DPOSettings
from llmctl.finetune.data import DataReport, Example, _string, read_rows
from llmctl.finetune.method import Method
from llmctl.finetune.task import FinetuneTask
from llmctl.finetune.tokenize import IGNORE, Tokenized, encode, pack, problem
from llmctl.training.chunked_loss import chunked_terms
from llmctl.training.config import TrainConfig
from llmctl.training.task import forward

REWARD_KEYS = ("reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward")


@dataclass
class PreferencePair:
    chosen: Tokenized
    rejected: Tokenized
    source: str  # file:line
    # log π_ref(response | prompt) of the starting weights, computed once before training
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def tokens(self) -> int:
        return self.chosen.tokens + self.rejected.tokens


# -- data -------------------------------------------------------------------------------------------
def _prompt_messages(row: dict, where: str) -> list[dict[str, str]]:
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        messages = checked_messages(prompt, where, "prompt")
        if messages[-1]["role"] != "user":
            raise UsageError(f"{where}: the prompt's last message must be the user's")
    else:
        raise UsageError(f"{where}: field 'prompt' is missing, empty, or neither a string nor a list of messages")
    system = _string(row, "system", where, required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _response(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    # TRL's conversational layout: the response as a one-message assistant list
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    return _string({key: value}, key, where)


def parse_pair(row: Any, where: str) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen, rejected) from one row, or a UsageError naming file:line."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object with prompt, chosen and rejected")
    messages = _prompt_messages(row, where)
    chosen, rejected = _response(row, "chosen", where), _response(row, "rejected", where)
    if chosen.strip() == rejected.strip():
        raise UsageError(f"{where}: 'chosen' and 'rejected' are the same text (nothing to prefer)")
    return messages, chosen, rejected


def load_pairs(paths: list[Path], skip_bad_rows: bool = False) -> tuple[list[tuple[list, str, str, str]], DataReport]:
    """Every row of every file as (messages, chosen, rejected, file:line); bad rows raise or are skipped."""
    report, pairs = DataReport(format="preference"), []
    for path in paths:
        rows = read_rows(Path(path))
        if not rows:
            raise UsageError(f"{path}: the file has no rows (an empty dataset)")
        for number, row in rows:
            report.rows += 1
            where = f"{path}:{number}"
            try:
                pairs.append((*parse_pair(row, where), where))
            except UsageError as e:
                if not skip_bad_rows:
                    raise UsageError(e.message, hint="fix the row, or pass --skip-bad-rows to skip and report it") from None
                report.skipped.append(e.message)
    if not pairs:
        raise UsageError("the data has no usable preference pairs" +
                         (f" ({len(report.skipped)} rows skipped)" if report.skipped else ""),
                         hint='rows need {"prompt": ..., "chosen": ..., "rejected": ...}')
    report.examples = len(pairs)
    return pairs, report


def encode_pairs(tokenizer, rows: list[tuple[list, str, str, str]], max_length: int, skip_bad_rows: bool,
                 skipped: list[str]) -> list[PreferencePair]:
    pairs = []
    for messages, chosen, rejected, where in rows:
        encoded = [encode(tokenizer, Example(messages=[*messages, {"role": "assistant", "content": text}], source=where))
                   for text in (chosen, rejected)]
        error = next((e for e in (problem(item, max_length) for item in encoded) if e is not None), None)
        if error is not None:
            if not skip_bad_rows:
                raise error
            skipped.append(error.message)
            continue
        pairs.append(PreferencePair(encoded[0], encoded[1], where))
    return pairs


def pack_pairs(pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
    """All chosen responses, then all rejected ones, packed into one row; `segments` says which
    sequence each position belongs to, `ref_logps` holds their reference log-probs in that order."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = pack(sequences)
    batch["segments"] = torch.repeat_interleave(torch.arange(len(sequences)),
                                                torch.tensor([len(s.ids) - 1 for s in sequences]))[None]
    batch["ref_logps"] = torch.tensor([p.ref_chosen for p in pairs] + [p.ref_rejected for p in pairs],
                                      dtype=torch.float32)
    return batch


# -- the objective ----------------------------------------------------------------------------------
def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(response | prompt) of every packed sequence: the sum over its response tokens."""
    labels = batch["labels"].reshape(-1)
    # cross_entropy per token = -log p(label); 0 where the label is IGNORE (prompt tokens); in chunks,
    # never the whole row's logits at once
    token_logps, _ = chunked_terms(model, lambda: forward(model, batch), lambda logits, at: -F.cross_entropy(
        logits, labels[at], ignore_index=IGNORE, reduction="none"))
    count = batch["ref_logps"].numel()
    return torch.zeros(count, device=token_logps.device).index_add(0, batch["segments"].view(-1), token_logps)


class DPOTerms(NamedTuple):
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # β (log π(c|x) − log π_ref(c|x))
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> DPOTerms:
    """-log σ(β[(log πθ(c) − log πref(c)) − (log πθ(r) − log πref(r))]); with label smoothing ε the
    conservative variant, which assumes a share ε of the labels are flipped."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return DPOTerms(losses, chosen_rewards.detach(), rejected_rewards.detach())


def reward_sums(terms: DPOTerms) -> dict[str, float]:
    """Margin, accuracy (chosen reward above rejected) and both rewards, summed over the pairs."""
    margin = terms.chosen_rewards - terms.rejected_rewards
    return {"reward_margin": float(margin.sum()), "reward_accuracy": float((margin > 0).sum()),
            "chosen_reward": float(terms.chosen_rewards.sum()), "rejected_reward": float(terms.rejected_rewards.sum())}


@torch.no_grad()
def add_reference_logps(model, pairs: list[PreferencePair], batch_size: int, device: torch.device) -> None:
    """Store log π_ref of every response, with the weights as they are now (before any step): exact,
    and the reference model never needs to be kept or run again."""
    was_training = model.training
    if getattr(model, "is_loaded_in_4bit", False):  # QLoRA: 4-bit weights are placed at load and cannot move
        device = next(model.parameters()).device
    else:
        model.to(device)
    model.eval()
    for start in range(0, len(pairs), batch_size):
        group = pairs[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pack_pairs(group).items()}
        logps = sequence_logps(model, batch).tolist()
        for i, pair in enumerate(group):
            pair.ref_chosen, pair.ref_rejected = logps[i], logps[len(group) + i]
    model.train(was_training)


class DPOTask(FinetuneTask):
    """FinetuneTask's shuffled epochs, over pairs; the DPO loss; rewards in progress and validation."""

    collate = staticmethod(pack_pairs)
    weigh_tokens = False  # the loss is a mean over pairs, and every process has as many
    eval_keys = ("val_loss", *(f"val_{k}" for k in REWARD_KEYS))
    reports_perplexity = False  # the loss is -log σ(reward margin), not a cross-entropy

    def __init__(self, train: list[PreferencePair], val: list[PreferencePair], cfg: TrainConfig, beta: float,
                 label_smoothing: float = 0.0):
        super().__init__(train, val, cfg)
        self.beta, self.label_smoothing = beta, label_smoothing
        self._window = {k: 0.0 for k in (*REWARD_KEYS, "count")}

    def _terms(self, model, batch: dict[str, torch.Tensor]) -> DPOTerms:
        policy, ref = sequence_logps(model, batch), batch["ref_logps"]
        n = ref.numel() // 2
        return dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta, self.label_smoothing)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = self._terms(model, batch)
        for key, value in reward_sums(terms).items():
            self._window[key] += value
        self._window["count"] += terms.losses.numel()
        return terms.losses.mean()

    def eval_sums(self, model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        terms = self._terms(model, batch)
        sums = {f"val_{k}": v for k, v in reward_sums(terms).items()}
        return {"val_loss": float(terms.losses.sum()), **sums, "count": terms.losses.numel()}

    def train_metrics(self) -> dict[str, float]:
        """Rewards on the training pairs since the last progress row (this process's share)."""
        count, window = self._window.pop("count"), self._window
        self._window = {k: 0.0 for k in (*REWARD_KEYS, "count")}
        return {k: round(v / count, 5) for k, v in window.items()} if count else {}


def check_dpo_settings(beta: float, label_smoothing: float) -> None:
    if not beta > 0:
        raise UsageError(f"--beta must be positive, got {beta}", hint="0.1 is the usual value; higher stays closer "
                                                                     "to the reference")
    if not 0 <= label_smoothing < 0.5:
        raise UsageError(f"--label-smoothing must be in [0, 0.5), got {label_smoothing}")


class DPO(Method):
    """Preference pairs instead of examples; the reference log-probs are the starting weights'."""

    title = "DPO"
    unit = "preference pairs"
    goes_on_from_adapter = True  # usually after supervised fine-tuning

    def settings(self) -> DPOSettings:
        return self.cfg.dpo

    def check(self) -> None:
        check_dpo_settings(self.cfg.dpo.beta, self.cfg.dpo.label_smoothing)

    def read(self, tokenizer, max_length: int) -> tuple[list[PreferencePair], DataReport]:
        rows, report = load_pairs(self.cfg.data, self.cfg.skip_bad_rows)
        return encode_pairs(tokenizer, rows, max_length, self.cfg.skip_bad_rows, report.skipped), report

    def prepare(self, model, items: list[PreferencePair], device: torch.device, note: Callable[[str], None]) -> None:
        # before the loop loads a checkpoint: a resumed run gets the same reference
        note(f"reference log-probs of {len(items)} pairs with the starting weights")
        add_reference_logps(model, items, self.cfg.train.batch_size, device)

    def task(self, train: list[PreferencePair], val: list[PreferencePair]) -> DPOTask:
        return DPOTask(train, val, self.cfg.train, self.cfg.dpo.beta, self.cfg.dpo.label_smoothing)

    def description(self, summary: dict) -> str:
        return f"DPO-trained LoRA adapter (rank {summary['rank']}, beta {self.cfg.dpo.beta}) on {summary['base']}"
