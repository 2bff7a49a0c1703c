"""`eval lineage`: a model's registered ancestors and descendants (base, adapter, merged model, export) answer
the same prompts greedily, and each parent-child pair is compared: token agreement of their answers and the
largest logit difference on the parent's text. A merge or an export should change nothing (or only by its
quantization); a fine-tune changes outputs on purpose, so its pairs are reported but not in the headline.

Relatives are found through the registry only: an entry's `base`, and its lineage fields `base`, `parent`
(fine-tunes), `adapter` and `merged_from` (merges), `source` (exports), each a registry name or a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.registry import ModelEntry

# Lineage fields naming a parent whose outputs the child should reproduce: a merge reproduces its adapter,
# an export (GGUF, quantized) its source. `base` and `parent` name what a fine-tune started from.
SAME_OUTPUT_FIELDS = ("adapter", "merged_from", "source")
TRAINED_FROM_FIELDS = ("base", "parent")
DEFAULT_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.",
                   "List three colours.", "What is 12 + 30?"]
LINEAGE_METRICS = ("agreement", "max_logit_diff")


@dataclass
class Edge:
    parent: str
    child: str
    same_output: bool  # a merge or an export: expected to answer like its parent

    @property
    def label(self) -> str:
        return f"{self.parent}->{self.child}"


@dataclass
class Family:
    members: list[str]  # parents before children
    edges: list[Edge] = field(default_factory=list)


def entry_paths(entry: ModelEntry) -> set[str]:
    paths = set()
    for value in (entry.source, entry.adapter):
        if value and Path(value).expanduser().exists():
            paths.add(str(Path(value).expanduser().resolve()))
    return paths


def find_entry(ref: str, entries: list[ModelEntry], by_path: dict[str, str]) -> str | None:
    """The registry name a lineage reference means: a name, or the path of an entry's weights or adapter."""
    names = {e.name for e in entries}
    if ref in names:
        return ref
    path = Path(ref).expanduser()
    return by_path.get(str(path.resolve())) if path.exists() else None


def parent_edges(entry: ModelEntry, entries: list[ModelEntry], by_path: dict[str, str]) -> list[Edge]:
    refs = [("base", entry.base)] if entry.base else []
    refs += [(key, entry.lineage.get(key)) for key in TRAINED_FROM_FIELDS + SAME_OUTPUT_FIELDS]
    edges: dict[str, Edge] = {}
    for key, ref in refs:
        parent = find_entry(ref, entries, by_path) if isinstance(ref, str) and ref else None
        if parent and parent != entry.name:
            same = key in SAME_OUTPUT_FIELDS
            # An adapter's own `source`/`adapter` is its directory; only lineage fields name a parent.
            edges[parent] = Edge(parent, entry.name, same or (parent in edges and edges[parent].same_output))
    return list(edges.values())


def find_family(name: str, entries: list[ModelEntry]) -> Family:
    """`name`, its ancestors and its descendants, parents first, with the parent-child edges among them."""
    by_path: dict[str, str] = {}
    for e in entries:
        for p in entry_paths(e):
            by_path.setdefault(p, e.name)
    edges = [edge for e in entries for edge in parent_edges(e, entries, by_path)]
    parents = {e.name: [x.parent for x in edges if x.child == e.name] for e in entries}
    children = {e.name: [x.child for x in edges if x.parent == e.name] for e in entries}

    def walk(start: str, step: dict[str, list[str]]) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in step.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    members = {name} | walk(name, parents) | walk(name, children)
    order: list[str] = []

    def visit(n: str, path: tuple[str, ...] = ()) -> None:
        if n in order or n in path:
            return
        for p in parents.get(n, []):
            if p in members:
                visit(p, path + (n,))
        order.append(n)

    for n in sorted(members):
        visit(n)
    return Family(order, [x for x in edges if x.parent in members and x.child in members])


# -- running the models -------------------------------------------------------------------------------

@dataclass
class Trace:
    """One model's greedy answer to one prompt: the tokens, and the logits on `sequence` at each answer step."""

    text: str
    prompt_ids: list[int]
    answer_ids: list[int]
    logits: Any  # torch.Tensor [answer steps, vocab], or None without logits


def greedy_trace(backend, request, max_tokens: int) -> Trace:
    """The greedy answer (transformers' own greedy search, with its KV cache: linear in the answer's length),
    then one forward pass over prompt + answer for the logits at every answer step."""
    import torch

    row = backend.prepare_row(request)
    ids = list(row.prompt_ids)
    with torch.no_grad():
        prompt = torch.tensor([ids], device=backend.device)
        out = backend.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=min(max_tokens, row.max_new), eos_token_id=sorted(backend.eos_ids),
                                     pad_token_id=backend.pad_id)
    answer = [int(t) for t in out[0, len(ids):]]
    answer = answer[:next((i for i, t in enumerate(answer) if t in backend.eos_ids), len(answer))]
    logits = logits_on(backend, ids, answer)
    return Trace(backend.tokenizer.decode(answer, skip_special_tokens=True), ids, answer, logits)


def logits_on(backend, prompt_ids: list[int], answer_ids: list[int]):
    """Logits that predict each answer token and the one after it (the last prompt position onwards)."""
    import torch

    with torch.no_grad():
        sequence = torch.tensor([prompt_ids + answer_ids], device=backend.device)
        return backend.model(input_ids=sequence).logits[0, len(prompt_ids) - 1:].float().cpu()


def agreement(a: list[int], b: list[int]) -> tuple[int, int, int | None]:
    """(positions that match, positions compared, first differing position or None)."""
    length = max(len(a), len(b))
    same = sum(1 for x, y in zip(a, b) if x == y)
    first = next((i for i in range(length) if i >= len(a) or i >= len(b) or a[i] != b[i]), None)
    return same, length, first


def run_lineage(name: str, prompts: list[str] | None = None, max_tokens: int = 16, config=None, save_dir=None,
                on_progress=None):
    """`llmctl eval lineage NAME`: every relative answers; every parent-child pair is compared and saved."""
    from llmctl.backends.base import GenerationRequest, Message, SamplingParams
    from llmctl.config import Config
    from llmctl.evaluate.runs import measured_run
    from llmctl.prompting import open_backend
    from llmctl.providers import capabilities_of
    from llmctl.registry import Registry

    registry = Registry()
    entry = registry.resolve(name)
    family = find_family(entry.name, registry.entries())
    if not family.edges:
        raise UsageError(f"'{entry.name}' has no registered ancestors or descendants to compare with",
                         hint="relatives are found through an entry's base and lineage (base, parent, adapter, "
                              "merged_from, source); see `llmctl models show NAME`")
    for member in family.members:
        if not capabilities_of(registry.resolve(member)).logits:
            raise UsageError(f"eval lineage compares logits, and '{member}' has none (a remote model?)")
    prompts = prompts or DEFAULT_PROMPTS
    requests = [GenerationRequest([Message("user", p)], SamplingParams(temperature=0, max_tokens=max_tokens))
                for p in prompts]
    traces: dict[str, list[Trace]] = {}
    rows: list[dict[str, Any]] = []

    def work(writer) -> dict[str, Any]:
        for done, member in enumerate(family.members):
            if on_progress:
                on_progress(f"running {member}", done, len(family.members))
            backend = open_backend(registry.resolve(member), config or Config())
            try:
                traces[member] = [greedy_trace(backend, r, max_tokens) for r in requests]
                for edge in (e for e in family.edges if e.child == member):
                    for index, (mine, theirs) in enumerate(zip(traces[member], traces[edge.parent])):
                        row = compare_traces(edge, index, prompts[index], theirs, mine,
                                             logits_on(backend, theirs.prompt_ids, theirs.answer_ids))
                        rows.append(row)
                        writer.append(row)
            finally:
                backend.close()
        return lineage_metrics(family, rows)

    summary = {"models": family.members, "model": entry.name, "prompts": len(prompts),
               "edges": [{"parent": e.parent, "child": e.child, "same_output": e.same_output} for e in family.edges],
               "settings": {"max_tokens": max_tokens, "greedy": True}}
    return measured_run("lineage", summary, save_dir, work, lambda: rows)


def compare_traces(edge: Edge, index: int, prompt: str, parent: Trace, child: Trace, child_logits) -> dict[str, Any]:
    same, length, first = agreement(parent.answer_ids, child.answer_ids)
    diff = None
    if child_logits.shape == parent.logits.shape:  # a different vocabulary has no logit to compare
        diff = round(float((child_logits - parent.logits).abs().max()), 6)
    return {"index": index, "edge": edge.label, "parent": edge.parent, "child": edge.child,
            "same_output": edge.same_output, "prompt": prompt, "parent_answer": parent.text,
            "child_answer": child.text, "matching_tokens": same, "tokens": length,
            "agreement": round(same / length, 6) if length else 1.0, "first_difference": first,
            "max_logit_diff": diff}


def lineage_metrics(family: Family, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pair `agreement:PARENT->CHILD` (matching answer tokens / tokens) and `max_logit_diff:PARENT->CHILD`;
    `agreement` (the lowest) and `max_logit_diff` (the highest) over pairs that should answer alike."""
    metrics: dict[str, Any] = {"agreement": None, "max_logit_diff": None}
    for edge in family.edges:
        mine = [r for r in rows if r["edge"] == edge.label]
        tokens = sum(r["tokens"] for r in mine)
        value = round(sum(r["matching_tokens"] for r in mine) / tokens, 6) if tokens else 1.0
        diffs = [r["max_logit_diff"] for r in mine if r["max_logit_diff"] is not None]
        diff = max(diffs) if diffs else None
        metrics[f"agreement:{edge.label}"] = value
        metrics[f"max_logit_diff:{edge.label}"] = diff
        if edge.same_output:
            metrics["agreement"] = value if metrics["agreement"] is None else min(metrics["agreement"], value)
            if diff is not None:
                metrics["max_logit_diff"] = diff if metrics["max_logit_diff"] is None else max(metrics["max_logit_diff"], diff)
    return metrics
