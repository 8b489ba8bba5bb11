"""A PNG chart of recall@k per dataset, condition and method, drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from dior_search.cli.outputs import write_output
from dior_search.data.paths import shown
from dior_search.evaluation.bench import BenchResult

KS = (1, 5, 10)
PALETTE = [(52, 101, 164), (204, 121, 32), (78, 154, 6), (117, 80, 123), (164, 0, 0)]
PANEL_W, PANEL_H, MARGIN = 260, 200, 36


def write_recall_chart(result: BenchResult, out: Path) -> None:
    """One panel per (dataset, condition): bars of recall@1/5/10, one colour per method."""
    panels = [(d, c, methods) for d, conds in result.items() for c, methods in conds.items()]
    methods = sorted({m for _, _, per_method in panels for m in per_method})
    columns = min(3, max(1, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    legend_h = 18 * len(methods) + 10
    image = Image.new("RGB", (columns * PANEL_W, rows * PANEL_H + legend_h), "white")
    draw = ImageDraw.Draw(image)
    for number, (dataset, condition, per_method) in enumerate(panels):
        left = (number % columns) * PANEL_W
        top = (number // columns) * PANEL_H
        draw.text((left + 8, top + 6), shown(f"{dataset}: {condition}"), fill="black")
        base = top + PANEL_H - 24
        height = PANEL_H - MARGIN - 30
        draw.line((left + MARGIN, base, left + PANEL_W - 10, base), fill="black")
        draw.line((left + MARGIN, base, left + MARGIN, base - height), fill="black")
        for tick in (0.0, 0.5, 1.0):
            y = base - tick * height
            draw.text((left + 6, y - 6), f"{tick:.1f}", fill="gray")
        group = (PANEL_W - MARGIN - 20) / len(KS)
        bar = group / (len(methods) + 1)
        for g, k in enumerate(KS):
            x0 = left + MARGIN + 6 + g * group
            draw.text((x0 + bar, base + 6), f"R@{k}", fill="black")
            for m, method in enumerate(methods):
                value = per_method.get(method, {}).get(f"recall@{k}")
                if value is None:
                    continue
                x = x0 + m * bar
                draw.rectangle((x, base - value * height, x + bar - 2, base), fill=PALETTE[m % 5])
    legend_top = rows * PANEL_H + 4
    for m, method in enumerate(methods):
        y = legend_top + 18 * m
        draw.rectangle((10, y + 2, 22, y + 14), fill=PALETTE[m % 5])
        draw.text((30, y + 2), method, fill="black")
    write_output(out, "--plot", lambda tmp: image.save(tmp, format="PNG"))
