"""Generate the docs' figure tables and plots from the benchmarks' results files.

    python scripts/docs_figures.py            # rewrite what is out of date
    python scripts/docs_figures.py --check    # exit 1, naming what is out of date

Measured figures live as data in `benchmarks/results/NAME.json` (written by the benchmark
scripts with `benchmarks/results_file.py`'s `write_results`, or transcribed from an older
README and labelled so in their `source`). A page shows them in a region

    <!-- figures: NAME -->
    ...generated table...
    <!-- /figures -->

which this script fills from `NAME.json`, with a caption saying where and how the figures
were measured. It also draws `docs/figures/throughput.svg` and `docs/figures/search-scale.svg`
as SVG text (no plotting library). Re-measuring changes the JSON; this script changes the
prose around it.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIGURES = ROOT / "docs" / "figures"
REGION = re.compile(
    r"(<!-- figures: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.DOTALL
)

Record = dict[str, Any]


def load(name: str) -> Record:
    return dict(json.loads((RESULTS / f"{name}.json").read_text()))


# Formatting ---------------------------------------------------------------------------------


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def pair(values: Sequence[float | None] | None, digits: int = 2, unit: str = "") -> str:
    """`p50 / p99 unit`, or the one value given."""
    if not values:
        return ""
    shown = [num(v, digits) for v in values if v is not None]
    return " / ".join(shown) + (f" {unit}" if unit else "")


def span(values: Sequence[float] | None, digits: int = 0, unit: str = "") -> str:
    """`a to b unit`, or `a unit` when both ends agree."""
    if not values:
        return ""
    low, high = values[0], values[-1]
    text = num(low, digits) if low == high else f"{num(low, digits)} to {num(high, digits)}"
    return text + (f" {unit}" if unit else "")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def share(value: float) -> str:
    return f"{100 * value:.0f}%"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A Markdown table; `align`: one letter per column, l or r (default l)."""
    marks = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def caption(*records: Record) -> str:
    """Where the figures come from: file, machine and load, command, when."""
    parts = []
    for record in records:
        stem = record["benchmark"] + (f"-{record['tag']}" if record.get("tag") else "")
        machine = record.get("machine", {})
        where = machine.get("description") or describe_machine(machine)
        load_avg = machine.get("load_average") or load_range(record.get("figures", {}))
        if load_avg:
            where += f"; load average {load_avg}"
        when = record.get("source") or (
            f"measured {str(record.get('measured_at', ''))[:10]} at commit {record.get('commit')}"
            + (" (uncommitted changes)" if record.get("dirty") else "")
        )
        parts.append(f"`benchmarks/results/{stem}.json`: {where}; `{record['command']}`; {when}.")
    return "\n".join(f"*{part}*  " for part in parts).rstrip() + "\n"


def describe_machine(machine: dict[str, Any]) -> str:
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    threads = f", {machine['torch_threads']} torch thread(s)" if "torch_threads" in machine else ""
    return f"{machine.get('cores')} cores of {machine.get('cpu')}{gpu}{threads}"


def load_range(figures: dict[str, Any]) -> str:
    """The machine's load while it measured, and whether that is busy for 2 cores."""
    start, end = figures.get("load_average_start"), figures.get("load_average_end")
    if start is None and isinstance(figures.get("load_average"), list):
        one_minute = figures["load_average"][0]
        busy = "busy" if one_minute > 2.5 else "quiet"
        return f"{one_minute:.1f} at the end ({busy} for 2 cores)"
    if start is None:
        return ""
    busy = "busy" if max(start, end or 0) > 2.5 else "quiet"
    return f"{start:.1f} at start, {end:.1f} at end ({busy} for 2 cores)"


# Tables, one renderer per results file -------------------------------------------------------


def throughput(name: str) -> str:
    """The paths' rates by C; `embed_throughput`: the GPU and CPU runs in one table."""
    if name == "embed_throughput":
        records = [load("embed_throughput-7b-cuda"), load("embed_throughput-mid-cpu")]
    else:
        records = [load(name)]
    rows = []
    for record in records:
        figures = record["figures"]
        rates = {(r["path"], r["conditions"]): r for r in figures["rows"]}
        for c in sorted({c for _, c in rates}):
            ours = rates["ours", c]
            naive = rates["naive", c]["embeddings_per_s"]
            label = f"{figures['model']}, {figures['dtype']}, {record['machine'].get('gpu', 'CPU')}"
            peak = ours.get("peak_share")
            rows.append(
                [
                    label if c == 1 else "",
                    str(c),
                    num(naive),
                    num(rates["reference-kv", c]["embeddings_per_s"]),
                    num(ours["embeddings_per_s"]),
                    f"{ours.get('x_naive') or ours['embeddings_per_s'] / naive:.2f}x",
                    f"{ours['time_over_bound']:.2f}x" if ours.get("time_over_bound") else "",
                    num(
                        ours["gflop_per_embedding"], 0 if ours["gflop_per_embedding"] >= 100 else 1
                    ),
                    f"{ours['tflops']:.3g}",
                    f"{100 * peak:.1f}%" if peak else "-",
                ]
            )
    header = ["model, machine", "C", "naive", "reference-kv", "ours", "ours / naive"]
    header += ["our time / bound", "GFLOP/emb", "ours TFLOPS", "% peak"]
    return table(header, rows, "lrrrrrrrrr") + "\n" + caption(*records)


def search_scale(name: str) -> str:
    record = load(name)
    rows = []
    for row in record["figures"]["rows"]:
        params = f", {row['search_params']}" if row.get("search_params") else ""
        rows.append(
            [
                f"{row['n']:,}",
                f"`{row['index_type']}`{params}",
                f"{row['build_s']:.0f} s",
                gib(row["index_bytes"]),
                gib(row["serve_peak_rss"]),
                pair(row["single_ms"], 1, "ms"),
                pair(row["batch_ms"], 0, "ms"),
                f"{row['recall']:.3f}",
            ]
        )
    header = ["N", "type chosen by `auto` (8G)", "build", "index", "serving peak RSS"]
    header += ["1 query p50 / p99", "64 queries p50 / p99", "recall@10"]
    return table(header, rows, "lllrrrrr") + "\n" + caption(record)


def deletions(name: str) -> str:
    record = load(name)
    rows = [
        [
            share(r["deleted"]) + (f", compacted ({r['compact_s']} s)" if r["compacted"] else ""),
            pair(r["single_ms"], 2, "ms"),
            f"{r['recall']:.3f}",
        ]
        for r in record["figures"]["rows"]
    ]
    return (
        table(["deleted", "1 query p50 / p99", "recall@10"], rows, "lrr") + "\n" + caption(record)
    )


def store_compare(name: str) -> str:
    record = load(name)
    rows = [
        [
            r["store"],
            f"`{r['index_type']}`" if r.get("index_type") else "",
            f"{r['inserts_per_s']:,}",
            f"{r['open_s']} s" if "open_s" in r else "",
            pair(r["single_ms"], 1, "ms"),
            f"{r['batched_ms_per_query']} ms" if "batched_ms_per_query" in r else "",
            f"{r['recall']:.3f}",
        ]
        for r in record["figures"]["rows"]
    ]
    header = ["store", "index type (`auto`, 8G)", "inserts/s", "open", "1 query p50 / p99"]
    header += ["batched, per query", "recall@10"]
    figures = record["figures"]
    sizes = f"{figures['vectors']:,} vectors of d = {figures['dim']:,}\n\n"
    return sizes + table(header, rows, "llrrrrr") + "\n" + caption(record)


def filtered_search(name: str) -> str:
    record = load(name)
    rows = [
        [
            share(r["passing"]),
            pair(r["single_ms"], 2, "ms"),
            f"{r['recall']:.3f}",
            str(r["short_answers"]),
            f"{r['top100_then_filter_recall']:.3f}",
        ]
        for r in record["figures"]["rows"]
    ]
    header = ["rows passing", "1 query p50 / p99", "recall@10", "queries with < 10 hits"]
    header += ["top-100 then filter, recall@10"]
    figures = record["figures"]
    what = f"{figures['vectors']:,} vectors of d = {figures['dim']:,}, `{figures['index_type']}`"
    return f"{what}\n\n" + table(header, rows, "lrrrr") + "\n" + caption(record)


def label_value_rows(name: str) -> str:
    """Results whose rows are already [figure, value, (bound)] lists."""
    record = load(name)
    rows = record["figures"]["rows"]
    header = ["figure", "value", "bound"][: len(rows[0])]
    return table(header, rows, "lrr") + "\n" + caption(record)


def serve_flood(name: str) -> str:
    """The flood of decode bombs, the thumbnail herd and the filter flood, one row a figure."""
    record = load(name)
    gif = record["figures"]["gif_flood"]
    herd = record["figures"]["thumbnail_herd"]
    flood = record["figures"]["filter_flood"]
    answered = ", ".join(f"{n} x {status}" for status, n in sorted(gif["answers"].items()))
    rows = [
        [
            "decode bombs: server RSS start / peak / 10 s after",
            f"{gif['rss_start_mib']} / {gif['rss_peak_mib']} / {gif['rss_settled_mib']} MiB",
            f"peak under start + budget ({gif['decode_budget_mib']} MiB)",
        ],
        ["decode bombs: uploads answered", answered, "200, or 504 past the deadline"],
        [
            "thumbnail herd: 16 cold requests, RSS before / peak / 10 s after",
            f"{herd['rss_before_mib']} / {herd['cold_peak_rss_mib']} / "
            f"{herd['cold_settled_rss_mib']} MiB ({herd['file_mib']:.0f} MiB image)",
            "after within 10% of before",
        ],
        [
            "thumbnail: second view p50 / max",
            f"{herd['second_view_p50_ms']} / {herd['second_view_max_ms']} ms",
            "under 50 ms",
        ],
        [
            "changed file: RSS before / peak / after (all 404)",
            f"{herd['changed_rss_before_mib']} / {herd['changed_peak_rss_mib']} / "
            f"{herd['changed_settled_rss_mib']} MiB",
            "after within 10% of before",
        ],
        [
            f"filter flood: {flood['filters']:,} filters in {flood['body_kib']} KiB",
            f"{'/'.join(map(str, flood['flood_statuses']))} in {flood['flood_seconds_max']} s",
            "one-line 400",
        ],
        [
            "server CPU in the 5 s after the filter flood",
            f"{flood['server_cpu_seconds_in_5_s_after']} s",
            "under 1 s",
        ],
    ]
    return table(["figure", "value", "bound"], rows, "lrr") + "\n" + caption(record)


def multi_condition(name: str) -> str:
    record = load(name)
    rows = [
        [f"{r['a']} + {r['b']}", f"{r['a_only']:.3f}", f"{r['b_only']:.3f}", f"{r['both']:.3f}"]
        for r in record["figures"]["rows"]
    ]
    header = ["conditions A + B", "A only", "B only", "A + B"]
    return table(header, rows, "lrrr") + "\n" + caption(record)


def answers(name: str) -> str:
    """The reference scheme's figures per condition (`scripts/eval_answers.py`)."""
    record = load(name)
    rows = [
        [
            condition,
            f"{r['answer_accuracy']:.3f}",
            f"{r['text_precision@10_min']:.2f}",
            f"{100 * r['facet_counts_off_at_most']:.1f}% at most",
        ]
        for condition, r in record["figures"]["by_scheme"]["reference"].items()
    ]
    header = ["condition", "answer accuracy", "text-to-image P@10, worst label value"]
    header += ["facet counts off the label counts"]
    return table(header, rows, "lrrr") + "\n" + caption(record)


def composition(name: str) -> str:
    record = load(name)
    found = record["figures"]
    compose, negative, feedback = found["composition"], found["negatives"], found["feedback"]

    def rounds(people: Record) -> str:
        keys = ("start_precision_at_20", "round_1_precision_at_20", "round_2_precision_at_20")
        return " / ".join(f"{people[k]:.3f}" for k in keys)

    scales = negative["precision_at_10_by_negative_scale"]
    rows = [
        [
            f'composition: precision@10 of "pattern of A, colour of B", {compose["pairs"]} pairs',
            f"{compose['precision_at_10']:.3f}",
            "0.9",
        ],
        [
            "the single-image query of A under both conditions, same targets",
            f"{compose['single_image_precision_at_10']:.3f}",
            "(baseline)",
        ],
        [
            "the single-image query of A under both, A's own two labels",
            f"{compose['single_image_own_labels_precision_at_10']:.3f}",
            "(reference)",
        ],
        [
            'negatives: precision@10 of "pattern of A, not the colour of C", '
            f"{negative['queries']} queries",
            f"{negative['precision_at_10']:.3f}",
            "0.9",
        ],
        [
            "the same without the negative",
            f"{negative['without_negative_precision_at_10']:.3f}",
            "(baseline)",
        ],
        [
            "negative scale " + " / ".join(f"{float(k):g}" for k in scales),
            " / ".join(f"{v:.3f}" for v in scales.values()),
            "",
        ],
        [
            "normalised alternative (cosine to q_c)",
            f"{negative['normalised_alternative_precision_at_10']:.3f}",
            "",
        ],
        [
            "feedback: precision@20 at the start / after round 1 / after round 2 "
            f"({feedback['people']} people)",
            rounds(feedback),
            "0.9 after two",
        ],
        [
            "the same with card-wide marks (a wrong card less-liked under both conditions)",
            rounds(feedback["card_wide_marks"]),
            "",
        ],
        [
            "the start image under both conditions (per-condition marks)",
            rounds(feedback["start_under_both"]),
            "",
        ],
        [
            "the start under both, card-wide marks",
            rounds(feedback["card_wide_marks_start_under_both"]),
            "",
        ],
    ]
    parts = [table(["figure", "value", "target"], rows, "lrr")]
    group_rows = [
        [c, str(g["k"]), str(g["labels"]), f"{g['ari']:.3f}", f"{g['name_accuracy']:.2f}"]
        for c, g in found["groups"].items()
    ]
    header = ["condition", "k (by answers)", "labels", "ARI"]
    header += ["groups named by their majority label"]
    parts.append(
        "Groups (automatic k, `groups -c CONDITION`):\n\n" + table(header, group_rows, "lrrrr")
    )
    distinct = found["distinct"]
    pairs, recall = distinct["top_20s_with_a_pair_of_copies"], distinct["recall_at_10_by_colour"]
    threshold = f"{distinct['threshold']:g}"
    distinct_rows = [
        ["top 20s holding an image and its copy", str(pairs["plain"]), str(pairs["distinct"])],
        [
            "recall@10 by colour (query left out)",
            f"{recall['plain']:.4f}",
            f"{recall['distinct']:.4f}",
        ],
        ["results hidden per query", "", f"{distinct['hidden_per_query']:.1f}"],
    ]
    parts.append(
        f"Distinct (`--distinct {threshold}`), on the set plus copies of {distinct['copies']} "
        "images (JPEG quality 70, resized to 80 %, or cropped to the central 90 %), "
        f"{distinct['queries']} queries under colour:\n\n"
        + table(["figure", "without", f"with `--distinct {threshold}`"], distinct_rows, "lrr")
    )
    judge_rows = []
    for judge, label in (
        ("fingerprint", "picture fingerprint"),
        ("unconditional_vector", "unconditional vector"),
    ):
        seen = distinct[judge]
        copies = seen["copy_similarity_min_median"]
        judge_rows.append(
            [label]
            + [pair(copies[k], 3) for k in ("jpeg", "resize", "crop")]
            + [pair(seen["nearest_other_similarity_max_median"], 3)]
        )
    header = ["judged by", "JPEG copy", "resized copy", "cropped copy"]
    header += ["nearest other image"]
    parts.append(
        "Similarity of a copy to its original (least / median) against each original's "
        "nearest other image (greatest / median):\n\n" + table(header, judge_rows, "lrrrr")
    )
    return "\n".join(parts) + "\n" + caption(record)


def bench_synthetic(name: str) -> str:
    record = load(name)
    leak = record["figures"]["leakage_dior"]
    rows = [
        [
            "leakage under `dior`",
            f"+{leak['min']:.2f} ({leak['min_condition']}) to +{leak['max']:.2f} "
            f"({leak['max_condition']})",
        ],
        [
            "rows answered differently with `--positions reference`",
            share(record["figures"]["reference_positions_answers_differ"]),
        ],
    ]
    return table(["figure", "value"], rows, "lr") + "\n" + caption(record)


def profile(name: str) -> str:
    record = load(name)
    parts = []
    for part in record["figures"]["tables"]:
        rows = [
            [r["stage"], *(f"{r[v]:g}" for v in ("before", "after", "grouped"))]
            for r in part["rows"]
        ]
        images = "image" if part["batch"] == 1 else "images"
        parts.append(f"C = {part['conditions']}, a batch of {part['batch']} {images}:\n")
        parts.append(table(["stage", "before", "after", "grouped"], rows, "lrrr"))
    return "\n".join(parts) + "\n" + caption(record)


def parquet_reads(name: str) -> str:
    record = load(name)
    rows = [
        [
            r["read"] + (f", {r['rows']:,} rows" if r["rows"] else ""),
            span(r["calling_thread_ms"], 1, "ms"),
            span(r["pyarrow_default_ms"], 1, "ms"),
            f"{r['ratio'][0]:.2f}x to {r['ratio'][1]:.2f}x",
        ]
        for r in record["figures"]["rows"]
    ]
    header = ["read", "on the calling thread", "pyarrow's default", "ratio"]
    return table(header, rows, "lrrr") + "\n" + caption(record)


def answers_cost(name: str) -> str:
    record = load(name)
    rows = [
        [
            str(r["run"]),
            str(r["passes_per_group"]),
            f"{r['ours_answers']} / {r['ours']}" if "ours" in r else "",
            f"{r['ratio']:.3f}x",
        ]
        for r in record["figures"]["rows"]
    ]
    header = ["run", "passes per group", "embeddings/s with / without answers", "ratio"]
    return table(header, rows, "rrrr") + "\n" + caption(record)


def fresh_clone(name: str) -> str:
    """Rows of `what` took `seconds` (a range) on `machine` (or the file's machine)."""
    record = load(name)
    rows = [
        [r["what"], span(r["seconds"], 0, "s"), r.get("machine")] for r in record["figures"]["rows"]
    ]
    if not any(row[2] for row in rows):  # the caption names the one machine
        return table(["what", "took"], [row[:2] for row in rows], "lr") + "\n" + caption(record)
    return table(["what", "took", "machine"], rows, "lrl") + "\n" + caption(record)


def reference_batched(name: str) -> str:
    record = load(name)
    rows = [[str(r["images"]), span(r["cosine"], 2), r["note"]] for r in record["figures"]["rows"]]
    header = ["images of mixed sizes", "cosine with the unbatched vector", "what else"]
    return table(header, rows, "rrl") + "\n" + caption(record)


RENDERERS: dict[str, Callable[[str], str]] = {
    "reference_batched": reference_batched,
    "embed_throughput": throughput,
    "embed_throughput-answers-cpu": answers_cost,
    "embed_throughput-mid-cpu-short": throughput,
    "search_scale": search_scale,
    "search_scale-short": search_scale,
    "deletions": deletions,
    "store_compare": store_compare,
    "store_compare-quick": store_compare,
    "filtered_search": filtered_search,
    "filtered_search-d512": filtered_search,
    "serve_flood": serve_flood,
    "feeding_options": label_value_rows,
    "eval_multi_condition": multi_condition,
    "eval_answers-tiny": answers,
    "bench_synthetic": bench_synthetic,
    "eval_composition": composition,
    "profile_embed-mid-cpu": profile,
    "parquet_reads": parquet_reads,
    "fresh_clone": fresh_clone,
    "docs_examples": fresh_clone,
}


# Plots ---------------------------------------------------------------------------------------

COLOURS = {"naive": "#9e9e9e", "reference-kv": "#f4a261", "ours": "#2a9d8f"}


def svg(width: int, height: int, body: list[str], title: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<rect width="{width}" height="{height}" fill="white"/>\n'
    )
    return head + "\n".join(body) + "\n</svg>\n"


def line(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"/>'


def text(x: float, y: float, words: str, anchor: str = "middle", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(words)}</text>'
    )


def throughput_svg() -> str:
    """Embeddings per second by path and C, one panel per machine (their scales differ)."""
    records = [load("embed_throughput-7b-cuda"), load("embed_throughput-mid-cpu")]
    panel_w, panel_h, top, left = 330, 220, 40, 50
    body = [
        text(345, 20, "Embeddings per second by conditions per image (C)", extra=' font-size="14"')
    ]
    for index, record in enumerate(records):
        x0 = left + index * (panel_w + 30)
        rows = record["figures"]["rows"]
        high = max(r["embeddings_per_s"] for r in rows)
        scale = panel_h / (high * 1.1)
        conditions = sorted({r["conditions"] for r in rows})
        group_w = panel_w / len(conditions)
        bar_w = group_w / (len(COLOURS) + 1)
        base = top + panel_h
        body.append(f'<line x1="{x0}" y1="{base}" x2="{x0 + panel_w}" y2="{base}" stroke="#333"/>')
        body.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{base}" stroke="#333"/>')
        for tick in nice_ticks(high * 1.1):
            y = base - tick * scale
            body.append(text(x0 - 4, y + 4, f"{tick:g}", "end"))
            body.append(
                f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + panel_w}" y2="{y:.1f}" stroke="#eee"/>'
            )
        for g, c in enumerate(conditions):
            for b, path in enumerate(COLOURS):
                rate = next(
                    r["embeddings_per_s"] for r in rows if (r["path"], r["conditions"]) == (path, c)
                )
                x = x0 + g * group_w + (b + 0.5) * bar_w
                h = rate * scale
                body.append(
                    f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                    f'fill="{COLOURS[path]}"><title>{path}, C = {c}: {rate:g}/s</title></rect>'
                )
            body.append(text(x0 + (g + 0.5) * group_w, base + 16, f"C = {c}"))
        machine = record["machine"].get("gpu", "CPU, 1 thread")
        body.append(
            text(
                x0 + panel_w / 2,
                base + 34,
                f"{record['figures']['model'].split(' (')[0]}, {machine}",
            )
        )
    for b, path in enumerate(COLOURS):
        x = left + b * 120
        key_y = top + panel_h + 48
        body.append(f'<rect x="{x}" y="{key_y}" width="12" height="12" fill="{COLOURS[path]}"/>')
        body.append(text(x + 16, top + panel_h + 58, path, "start"))
    return svg(2 * panel_w + 30 + left + 20, top + panel_h + 72, body, "embedding throughput")


def nice_ticks(high: float) -> list[float]:
    step = 10 ** math.floor(math.log10(high / 4))
    for factor in (1, 2, 5, 10):
        if high / (step * factor) <= 6:
            step *= factor
            break
    return [step * i for i in range(int(high / step) + 1)]


def search_scale_svg() -> str:
    """Latency per query (p50 and p99) against collection size, log-log, every run."""
    runs = [load(p.stem) for p in sorted(RESULTS.glob("search_scale*.json"))]
    points = [(r["n"], ms) for run in runs for r in run["figures"]["rows"] for ms in r["single_ms"]]
    width, height, left, top, plot_w, plot_h = 720, 300, 60, 40, 440, 200
    n_low, n_high = min(n for n, _ in points) / 2, max(n for n, _ in points) * 2
    ms_low, ms_high = min(ms for _, ms in points) / 2, max(ms for _, ms in points) * 2

    def x(n: float) -> float:
        return left + plot_w * math.log(n / n_low) / math.log(n_high / n_low)

    def y(ms: float) -> float:
        return top + plot_h * (1 - math.log(ms / ms_low) / math.log(ms_high / ms_low))

    body = [
        text(
            left + plot_w / 2,
            20,
            "One query's latency against collection size",
            extra=' font-size="14"',
        )
    ]
    body.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>'
    )
    for decade in range(math.ceil(math.log10(n_low)), math.floor(math.log10(n_high)) + 1):
        body.append(text(x(10**decade), top + plot_h + 16, f"{10**decade:,}"))
    for decade in range(math.ceil(math.log10(ms_low)), math.floor(math.log10(ms_high)) + 1):
        body.append(text(left - 6, y(10**decade) + 4, f"{10**decade:g} ms", "end"))
        body.append(line(left, y(10**decade), left + plot_w, y(10**decade), "#eee"))
    body.append(text(left + plot_w / 2, top + plot_h + 34, "vectors (d = 3,584), log scale"))
    markers = ["#2a9d8f", "#e76f51", "#264653", "#e9c46a"]
    for index, run in enumerate(runs):
        colour = markers[index % len(markers)]
        for r in run["figures"]["rows"]:
            p50, p99 = r["single_ms"]
            body.append(line(x(r["n"]), y(p50), x(r["n"]), y(p99), colour))
            tip = f"{r['n']:,}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {r['index_type']}"
            body.append(
                f'<circle cx="{x(r["n"]):.1f}" cy="{y(p50):.1f}" r="4" fill="{colour}">'
                f"<title>{html.escape(tip)}</title></circle>"
            )
        label = run.get("source") or f"measured {str(run.get('measured_at'))[:10]}"
        load_avg = run["machine"].get("load_average") or load_range(run["figures"])
        body.append(
            f'<circle cx="{left + 8}" cy="{top + plot_h + 52 + 16 * index}" r="4" fill="{colour}"/>'
        )
        body.append(
            text(left + 16, top + plot_h + 56 + 16 * index, f"{label}; load {load_avg}", "start")
        )
    body.append(
        text(left + plot_w, top + plot_h + 52 + 16 * len(runs), "dot: p50; line up to p99", "end")
    )
    return svg(width, height + 16 * len(runs) + 30, body, "search latency at scale")


PLOTS: dict[str, Callable[[], str]] = {
    "throughput.svg": throughput_svg,
    "search-scale.svg": search_scale_svg,
}


# Driver --------------------------------------------------------------------------------------


def render_page(source: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"no renderer for figures region {name!r}")
        return match.group(1) + RENDERERS[name](name) + match.group(4)

    return REGION.sub(fill, source)


def generated() -> dict[Path, str]:
    """Every generated file's path and its content as the results files say it should be."""
    out = {page: render_page(page.read_text()) for page in PAGES}
    out.update({FIGURES / name: draw() for name, draw in PLOTS.items()})
    return out


def stale() -> list[Path]:
    return [
        path
        for path, content in generated().items()
        if not path.is_file() or path.read_text() != content
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say what is out of date")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"out of date: {path.relative_to(ROOT)} (run python scripts/docs_figures.py)")
        return 1 if old else 0
    FIGURES.mkdir(exist_ok=True)
    for path, content in generated().items():
        if not path.is_file() or path.read_text() != content:
            path.write_text(content)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
