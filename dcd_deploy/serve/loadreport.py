"""The load test's files: JSON (``levels[].concurrency, throughput, p50, p90, p99, errors``) and one
self-contained HTML page with its latency/throughput plot, in the style of ``bench``'s report."""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

from .. import reporting
from ..bench.report import CSS
from .loadtest import LoadResult


def figure(result: LoadResult):
    """A matplotlib Figure: throughput (bars, left) and p50/p90/p99 latency (lines, right) per concurrency."""
    from matplotlib.figure import Figure

    levels = [lv.to_dict() for lv in result.levels]
    labels = [str(d["concurrency"]) for d in levels]
    xs = list(range(len(levels)))
    fig = Figure(figsize=(9, 3.4))
    ax_t, ax_l = fig.subplots(1, 2)
    ax_t.bar(xs, [d["throughput"] for d in levels], color="#1f77b4", alpha=0.7)
    ax_t.set_xticks(xs, labels)
    ax_t.set_xlabel("concurrency")
    ax_t.set_ylabel("inferences / s")
    ax_t.set_title("throughput", fontsize=10)
    for key, colour in (("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728")):
        points = [(x, d[key]) for x, d in zip(xs, levels) if d[key] is not None]
        if points:
            ax_l.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=key)
    ax_l.set_xticks(xs, labels)
    ax_l.set_xlabel("concurrency")
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_title("latency of answered requests", fontsize=10)
    ax_l.legend(fontsize=8, frameon=False)
    for ax in (ax_t, ax_l):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_svg(result: LoadResult) -> str:
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        buf = io.StringIO()
        figure(result).savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.find("<svg"):]


def to_html(result: LoadResult) -> str:
    e = html.escape
    data = result.to_dict()
    how = f"{result.requests} requests per level" if result.requests else f"{result.duration:g} s per level"
    meta = [("url", result.url), ("model", result.model), ("input", f"{result.input['name']} "
            f"{'×'.join(map(str, result.input['shape']))} {result.input['datatype']}, binary tensors"),
            ("load", how), ("date", result.date)]
    head = "".join(f'<th class="num">{c}</th>' for c in ("concurrency", "requests", "infer/s", "p50 ms", "p90 ms",
                                                          "p99 ms", "errors"))
    rows = []
    for d in data["levels"]:
        cells = [d["concurrency"], d["requests"], f"{d['throughput']:.1f}",
                 *(f"{d[k]:.1f}" if d[k] is not None else "—" for k in ("p50", "p90", "p99")), d["errors"]]
        rows.append("<tr>" + "".join(f'<td class="num">{e(str(c))}</td>' for c in cells) + "</tr>")
    errors = [f"<li>concurrency {d['concurrency']}: {e(m)}</li>" for d in data["levels"] for m in d["error_messages"]]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>dcd-deploy loadtest: {e(result.model)}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>dcd-deploy loadtest: {e(result.model)}</h1>", '<table class="meta">',
             *(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in meta), "</table>",
             f"<table><tr>{head}</tr>", *rows, "</table>",
             f"<figure>{plot_svg(result)}<figcaption>Throughput and latency percentiles per concurrency level "
             "(answered requests only).</figcaption></figure>"]
    if errors:
        parts.append("<h2>First errors</h2><ul>" + "".join(errors) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {"json": lambda r: reporting.to_json(r.to_dict()), "html": to_html}


def check_paths(**paths: str | os.PathLike | None) -> None:
    for fmt, path in paths.items():
        if path is not None:
            reporting.check_output_path(path, f"--{fmt} report")


def write_reports(result: LoadResult, **paths: str | os.PathLike | None) -> list[Path]:
    return [reporting.write_output(path, RENDERERS[fmt](result), what=f"{fmt} report")
            for fmt, path in paths.items() if path is not None]
