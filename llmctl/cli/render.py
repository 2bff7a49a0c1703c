"""Rich renderings people read: the next-token probability table and the rendered prompt."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

from llmctl.backends.base import RenderedPrompt, TokenInfo

BAR_WIDTH = 30


def visible_token(token: str) -> str:
    """Show the whitespace that makes ' Paris' and 'Paris' different tokens."""
    return repr(token)[1:-1].replace(" ", "␣") if token.strip() != token or not token else repr(token)[1:-1]


def bar_text(fraction: float, width: int = BAR_WIDTH) -> str:
    """A bar in eighths of a cell, so small differences still show."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def probability_table(info: TokenInfo, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    table.add_column("prob", justify="right")
    table.add_column("(bars relative to the top candidate)", no_wrap=True, style="dim")
    scale = max((c.prob for c in info.top), default=0) or 1.0
    for rank, candidate in enumerate(info.top, 1):
        bar = Text(bar_text(candidate.prob / scale), style="green" if candidate.token == info.token else "cyan")
        style = "bold" if candidate.token == info.token else ""
        table.add_row(str(rank), Text(visible_token(candidate.token), style=style),
                      f"{candidate.prob:.4f}", bar)
    return table


def rendered_prompt_text(rendered: RenderedPrompt) -> Text:
    tokens = "?" if rendered.tokens is None else str(rendered.tokens)
    text = Text(f"── rendered prompt ({rendered.mode}, {tokens} tokens) ──\n", style="dim")
    text.append(rendered.text)
    text.append("\n── end of prompt ──", style="dim")
    return text


# -- seeing inside: tokens, next-token distributions, pairs, experts, attention, LoRA, few-shot ----

TOKEN_STYLES = ("black on bright_cyan", "black on bright_yellow")
SPECIAL_STYLE = "bold white on magenta"
SHADES = " ░▒▓█"


def token_strip(tokens, boundaries: bool = False) -> Text:
    """Tokens in alternating colours (special ones marked), so where each begins and ends shows;
    `boundaries` (for output without colour) also puts a │ between them."""
    text = Text()
    for i, token in enumerate(tokens):
        if boundaries and i:
            text.append("│", style="dim")
        shown = token.text.replace("\n", "↵\n") if token.text else "∅"
        text.append(shown, style=SPECIAL_STYLE if token.special else TOKEN_STYLES[i % 2])
    return text


def tail_text(text: str, width: int = 40) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _probability_cell(prob: float, width: int = 12) -> Text:
    cell = Text(f"{prob:.4f} ")
    cell.append(bar_text(prob, width), style="cyan")
    return cell


def next_token_table(step, model: str) -> Table:
    """One step's distributions side by side, a column per temperature; bars are absolute (1 = certain)."""
    table = Table(title=f"next token after {tail_text(step.context, 60)!r} · {model}", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    for dist in step.distributions:
        table.add_column(f"T = {dist.temperature:g}" + (" (greedy)" if dist.temperature == 0 else ""), no_wrap=True)
    for rank, candidate in enumerate(step.distributions[0].top, 1):
        style = "bold green" if candidate.id == step.chosen_id else ""
        table.add_row(str(rank), Text(visible_token(candidate.token), style=style),
                      *[_probability_cell(float(d.probs[candidate.id])) for d in step.distributions])
    table.add_section()
    table.add_row("", Text("other tokens", style="dim"), *[f"{d.other:.4f}" for d in step.distributions])
    table.add_row("", Text("entropy", style="dim"), *[f"{d.entropy_bits:.2f} bits" for d in step.distributions])
    return table


def next_steps_table(result) -> Table:
    """The greedy continuation one token at a time: what was chosen, how sure each temperature was."""
    reference = min(range(len(result.temperatures)), key=lambda i: abs(result.temperatures[i] - 1.0))
    table = Table(title=f"greedy continuation · {result.model} · per temperature: p(next)  entropy in bits",
                  title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("step", justify="right", style="dim")
    table.add_column("text so far → next", ratio=2)
    for t in result.temperatures:
        table.add_column(f"T = {t:g}", justify="right", no_wrap=True)
    table.add_column(f"runners-up (T = {result.temperatures[reference]:g})", style="dim", ratio=1)
    for number, step in enumerate(result.steps, 1):
        row = Text(tail_text(step.context, 28), style="dim")
        row.append(" → ")
        row.append(visible_token(step.chosen), style="bold green")
        cells = [f"{float(d.probs[step.chosen_id]):.2f}  {d.entropy_bits:.1f}" for d in step.distributions]
        others = [c for c in step.distributions[reference].top if c.id != step.chosen_id][:2]
        table.add_row(str(number), row, *cells, "  ".join(f"{visible_token(c.token)} {c.prob:.2f}" for c in others))
    return table


def pairs_table(result) -> Table:
    """Input tokens -> target token, with the loss the model gives the target (when it has one)."""
    table = Table(title=f"training pairs · {result.model}", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    if result.samples > 1:
        table.add_column("sample", justify="right", style="dim")
    table.add_column("input", justify="right")
    table.add_column("→ target")
    if result.loss_from:
        table.add_column("loss", justify="right")
        table.add_column("p(target)", justify="right")
        table.add_column("(loss)", style="dim", no_wrap=True)
    worst = max((p.loss for p in result.pairs if p.loss is not None), default=0) or 1.0
    for number, pair in enumerate(result.pairs, 1):
        shown = result.tokens[pair.start:pair.target]
        cut = 0
        while sum(len(t.text) for t in shown[cut:]) > 48 and cut < len(shown) - 1:
            cut += 1
        inputs = Text("…", style="dim") if cut else Text()
        inputs.append_text(token_strip(shown[cut:]))
        row = [str(number)] + ([str(pair.sample)] if result.samples > 1 else [])
        row += [inputs, Text(visible_token(result.tokens[pair.target].text), style="bold")]
        if result.loss_from:
            prob = math.exp(-pair.loss)
            row += [f"{pair.loss:.3f}", f"{prob:.4f}" if prob >= 1e-4 else f"{prob:.1e}",
                    Text(bar_text(pair.loss / worst, 12), style="red")]
        table.add_row(*row)
    return table


def pairs_summary(result) -> Text:
    n, samples = len(result.pairs), result.samples
    text = Text(f"{n} pair{'s' if n != 1 else ''} from {len(result.tokens)} tokens in {samples} "
                f"sample{'s' if samples != 1 else ''} of up to {result.context + 1} tokens")
    if result.mean_loss is not None:
        text.append(f" · mean loss {result.mean_loss:.3f} nats (perplexity {math.exp(result.mean_loss):.1f}) "
                    f"from {result.loss_from}")
    for note in result.notes:
        text.append(f"\n{note}", style="yellow")
    return text


def routing_table(routing) -> Table:
    """The experts each token went to, per layer, likeliest first."""
    table = Table(title=f"experts chosen per token (top {routing.top_k} of {routing.experts}, likeliest first) · "
                        f"{routing.model}", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    for layer in range(len(routing.chosen)):
        table.add_column(f"layer {layer}", no_wrap=True)
    for i, token in enumerate(routing.tokens):
        cells = [" ".join(str(e) for e in routing.chosen[layer][i]) for layer in range(len(routing.chosen))]
        table.add_row(str(i), Text(visible_token(token.text), style="bold" if token.special else ""), *cells)
    return table


def expert_load_table(routing) -> Table:
    table = Table(title="tokens per expert", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right", style="dim")
    for expert in range(routing.experts):
        table.add_column(f"e{expert}", justify="right")
    for layer in range(len(routing.chosen)):
        load = routing.load(layer)
        table.add_row(str(layer), *[Text(str(n), style="bold" if n == max(load) else "") for n in load])
    return table


def attention_grid(amap) -> Table:
    """Attention as shaded cells: a row per token, a column per token it may attend to."""
    head = f"head {amap.head}" if amap.head is not None else f"mean of {amap.heads} heads"
    table = Table(title=f"attention · {amap.model} · layer {amap.layer} (of 0-{amap.layers - 1}), {head} "
                        f"(░▒▓█ = more weight)", title_justify="left", box=None, padding=(0, 0))
    table.add_column("#", justify="right", style="dim")
    table.add_column(" token", justify="right")
    table.add_column(" ")
    for key in range(len(amap.tokens)):
        table.add_column(str(key % 10), justify="left", style="cyan", no_wrap=True)
    table.add_column("  most attended", no_wrap=True)
    for query, row in enumerate(amap.weights):
        cells = [SHADES[min(len(SHADES) - 1, int(w * (len(SHADES) - 1) + 0.999))] * 2 if key <= query else ""
                 for key, w in enumerate(row)]
        best = max(range(query + 1), key=lambda key: row[key])
        table.add_row(str(query), " " + visible_token(amap.tokens[query].text), "", *cells,
                      f"  {visible_token(amap.tokens[best].text)} {row[best]:.2f}")
    return table


def lora_share_table(share) -> Table:
    """What LoRA trains, per module kind: its adapters' parameters next to the weights they sit beside."""
    table = Table(title=f"LoRA rank {share.rank}: what it trains", title_justify="left", show_edge=False,
                  pad_edge=False)
    for column in ("module", "modules", "weights", "LoRA", "LoRA / weights"):
        table.add_column(column, justify="left" if column == "module" else "right")
    for m in share.modules:
        table.add_row(m.module, str(m.count), f"{m.base_parameters:,}", f"{m.lora_parameters:,}",
                      f"{m.lora_parameters / m.base_parameters:.2%}" if m.base_parameters else "-")
    table.add_section()
    table.add_row("all", "", f"{share.base_parameters:,}", f"{share.trainable:,}",
                  f"{share.trainable / share.base_parameters:.2%}")
    table.caption = (f"trainable: {share.trainable:,} of {share.base_parameters + share.trainable:,} parameters "
                     f"(base + LoRA) = {share.share:.2%}")
    table.caption_justify = "left"
    return table


def shot_comparison_text(result) -> Text:
    text = Text()
    text.append("zero-shot: ", style="bold")
    text.append(result.zero_shot.text.strip() + "\n")
    text.append(f"few-shot ({result.shots} example{'s' if result.shots != 1 else ''}): ", style="bold")
    text.append(result.few_shot.text.strip() + "\n")
    if result.expected is None:
        text.append(f"({result.note})", style="dim")
        return text
    text.append(f"\nexpected first token {visible_token(result.expected)!r} (the few-shot answer's first), "
                "probability at temperature 1:\n", style="dim")
    for name, answer in (("zero-shot", result.zero_shot), ("few-shot", result.few_shot)):
        text.append(f"  {name:<10}{answer.expected_prob:.4f} ")
        text.append(bar_text(answer.expected_prob, 24), style="green" if name == "few-shot" else "cyan")
        text.append(f"  rank {answer.expected_rank}\n", style="dim")
    return text
