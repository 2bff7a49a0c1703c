"""Rich renderings people read: the next-token probability table and the rendered prompt."""

from __future__ import annotations

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
