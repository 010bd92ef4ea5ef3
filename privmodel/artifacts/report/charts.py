"""Small matplotlib charts rendered to inline PNG data URIs (Agg backend, no files, no network).

A PNG carries pixels, not markup, so names drawn into a chart (silo names, histogram bands) cannot
inject anything into the page; the URI itself is base64 and the template escapes the attribute.
Mathtext and TeX are switched off: a name like "$\\x$" is drawn as typed instead of being parsed.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def png_data_uri(draw: Callable[[Axes], None], size: tuple[float, float] = (4.6, 3.2)) -> str:
    """Call `draw(ax)` on a fresh figure and return it as a base64 PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig, ax = plt.subplots(figsize=size, dpi=90)
        try:
            draw(ax)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
        finally:
            plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(value: object, limit: int = 40) -> str:
    """Chart text from data: shortened, never parsed (see the module note)."""
    label = str(value)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
    xlog: bool = False,
) -> str:
    def draw(ax: Axes) -> None:
        for name, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o" if len(xs) < 25 else None, ms=3, label=_label(name))
        if diagonal:
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        if xlog:
            from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

            ax.set_xscale("log")
            ticks = sorted({float(x) for xs, _ in series.values() for x in xs})
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(fontsize=8)

    return png_data_uri(draw)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str, ylabel: str) -> str:
    def draw(ax: Axes) -> None:
        ax.bar([_label(label, 20) for label in labels], list(values), color="#4a6fa5")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)

    return png_data_uri(draw)
