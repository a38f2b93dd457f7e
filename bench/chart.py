"""Draw the ratio chart from a results JSON with matplotlib (run in bench/.cache/plot by bench/run.py).

    bench/.cache/plot/bin/python bench/chart.py bench/results/latest.json docs/performance-ratios.png

One bar per target against a peer, as "times better than the peer": the ratio otpy/peer
for rates, its inverse for latency and memory, so that longer to the right is always
better; bars start at parity (1x). The black tick on each bar is the target; green
bars meet it, red ones do not. The number by a bar is the ratio as in the tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GREEN, RED = "#2e8b57", "#c0392b"


def render(report: dict[str, Any], path: Path) -> None:
    bars = list(reversed(report["chart"]))  # the first target on top
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(bars) + 1.6), dpi=110)
    ys = range(len(bars))
    values = [bar["advantage"] for bar in bars]
    colors = [GREEN if bar["verdict"] == "PASS" else RED for bar in bars]
    ax.barh(list(ys), [v - 1 for v in values], left=1, color=colors, height=0.6)
    for y, bar in zip(ys, bars, strict=True):
        ax.plot([bar["goal"], bar["goal"]], [y - 0.38, y + 0.38], color="black", linewidth=2)
        end = max(bar["advantage"], bar["goal"], 1.0)
        ax.text(end * 1.08, y, f"{bar['ratio']:.2f}x", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([bar["label"] for bar in bars], fontsize=8)
    ax.set_xlim(min([*values, 0.5]) / 1.5, max([*values, *(b["goal"] for b in bars), 2.0]) * 2.2)
    ax.set_xlabel("times better than the peer (log scale; latency and memory inverted); black tick: target")
    ax.text(
        0.99,
        0.01,
        "labels: ratio otpy/peer as in the tables",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="grey",
    )
    machine = report["machine"]
    ax.set_title(
        f"otpy vs peers, medians of {report['reps']} rounds — {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    render(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
