"""Pictures for --png: next-token bars per temperature, expert-routing and attention heat maps.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot: no global state, no display),
and written to a temporary file that is renamed into place.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from llmctl.inspect.attention import AttentionMap
    from llmctl.inspect.experts import Routing
    from llmctl.inspect.nexttoken import NextTokens

MAX_STEP_ROWS = 8  # more rows of bars than this make a picture nobody can read
DPI = 120


def check_png_path(path: Path) -> Path:
    """Refuse a --png path that cannot be written, before any model is loaded."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise UsageError(f"--png {path}: the file name must end in .png")
    if path.is_dir():
        raise UsageError(f"--png {path} is a directory", hint="give a file name, e.g. attention.png")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write --png {path}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --png {path}: {parent} is not writable")
    return path


def save_png(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise UsageError(f"cannot write --png {path}: {e.strerror or e}") from None
    return path


def label(token: str) -> str:
    """A token as an axis label: the spaces and newlines that tell tokens apart made visible."""
    shown = token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown) or "∅"


def next_token_figure(result: NextTokens) -> Figure:
    from matplotlib.figure import Figure

    steps = result.steps[:MAX_STEP_ROWS]
    cols, k = len(result.temperatures), result.k
    figure = Figure(figsize=(3.4 * cols, (0.9 + 0.22 * k) * len(steps) + 0.6), layout="constrained")
    axes = figure.subplots(len(steps), cols, squeeze=False, sharex=True)
    for row, step in enumerate(steps):
        for col, dist in enumerate(step.distributions):
            ax = axes[row][col]
            names = [label(c.token) for c in dist.top][::-1]
            ax.barh(names, [c.prob for c in dist.top][::-1],
                    color=["tab:green" if c.id == step.chosen_id else "tab:blue" for c in dist.top][::-1])
            ax.set_xlim(0, 1)
            ax.tick_params(axis="y", labelsize=8)
            title = f"T = {dist.temperature:g} · entropy {dist.entropy_bits:.2f} bits"
            ax.set_title(title, fontsize=9)
        tail = step.context[-40:].replace("\n", "↵")
        axes[row][0].set_ylabel(("…" if len(step.context) > 40 else "") + tail, fontsize=8, rotation=0,
                                ha="right", va="center")
    shown = "" if len(result.steps) <= MAX_STEP_ROWS else f" (first {MAX_STEP_ROWS} of {len(result.steps)} steps)"
    figure.suptitle(f"next-token probabilities · {result.model}{shown}", fontsize=10)
    return figure


def routing_figure(routing: Routing) -> Figure:
    from matplotlib.figure import Figure

    n_layers, n_tokens = len(routing.chosen), len(routing.tokens)
    figure = Figure(figsize=(1.2 + (0.5 + 0.32 * routing.experts) * n_layers, 1.2 + 0.26 * n_tokens),
                    layout="constrained")
    axes = figure.subplots(1, n_layers, squeeze=False, sharey=True)[0]
    image = None
    for layer, ax in enumerate(axes):
        image = ax.imshow(routing.probs[layer], aspect="auto", cmap="viridis", vmin=0, vmax=1)
        for token, chosen in enumerate(routing.chosen[layer]):  # a ring round each expert the token went to
            ax.scatter(chosen, [token] * len(chosen), s=40, facecolors="none", edgecolors="white", linewidths=1.2)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks(range(routing.experts))
        ax.set_xlabel("expert", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(n_tokens), [label(t.text) for t in routing.tokens])
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="router probability")
    figure.suptitle(f"expert routing · {routing.model} · top {routing.top_k} of {routing.experts} "
                    "(rings: the experts chosen)", fontsize=10)
    return figure


def attention_figure(amap: AttentionMap) -> Figure:
    from matplotlib.figure import Figure

    n = len(amap.tokens)
    side = max(4.0, 1.5 + 0.3 * n)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(amap.weights, cmap="viridis", vmin=0, vmax=1)
    labels = [label(t.text) for t in amap.tokens]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("attends to (key)")
    ax.set_ylabel("token (query)")
    figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    head = f"head {amap.head}" if amap.head is not None else f"mean of {amap.heads} heads"
    ax.set_title(f"attention · {amap.model} · layer {amap.layer} (of 0-{amap.layers - 1}), {head}", fontsize=10)
    return figure
