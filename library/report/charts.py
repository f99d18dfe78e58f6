"""The report's charts as inline SVG, drawn with matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

import io

COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")


def _figure(width: float = 7.5, height: float = 2.8):
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small files, crisp in the browser
    matplotlib.rcParams["svg.hashsalt"] = "sd-train"  # stable element ids
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e4e4e4", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig, element_id: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={key: None for key in ("Creator", "Date", "Format", "Type")})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML
    return text.replace("<svg ", f'<svg id="{element_id}" role="img" ', 1)


def loss_chart(current: list[tuple[int, float]], average: list[tuple[int, float]],
               validation: list[tuple[int, float]], epoch_means: list[tuple[int, float]]) -> str:
    """Loss per step (thin), kohya's moving average, epoch means and validation loss, all against the step."""
    fig, ax = _figure()
    if current:
        ax.plot(*zip(*current), color=COLORS[0], alpha=0.35, linewidth=0.8, label="loss per step")
    if average:
        ax.plot(*zip(*average), color=COLORS[0], linewidth=1.8, label="moving average")
    if epoch_means:
        ax.plot(*zip(*epoch_means), "o", color=COLORS[2], markersize=5, label="epoch mean")
    if validation:
        ax.plot(*zip(*validation), "s-", color=COLORS[1], markersize=4, linewidth=1.2, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.85, edgecolor="none")
    return _svg(fig, "loss-chart")


def lr_chart(groups: dict[str, list[tuple[int, float]]]) -> str:
    """One learning-rate line per parameter group."""
    fig, ax = _figure(height=2.4)
    for i, (name, points) in enumerate(sorted(groups.items())):
        ax.plot(*zip(*points), color=COLORS[i % len(COLORS)], linewidth=1.6, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig, "lr-chart")


def bar_chart(labels: list[str], values: list[float], element_id: str, xlabel: str) -> str:
    """Horizontal bars (bucket counts, block norms), first label on top."""
    fig, ax = _figure(height=max(1.6, 0.22 * len(labels) + 0.8))
    ax.barh(range(len(labels)), values, color=COLORS[0])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.yaxis.grid(False)
    return _svg(fig, element_id)
