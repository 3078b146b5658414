"""Render a :class:`~dcd_deploy.bench.BenchResult`: terminal table, JSON, Markdown, HTML.

Every format carries the same facts: the model, input size, settings (threads, warm-up, runs,
interleaving, spinning), the versions, CPU model, devices and date, one table per provider and
batch size, why each row that was not measured was not, and how long each artifact took to make.
The HTML page is one self-contained file: styles inline and one latency-distribution plot (SVG,
drawn headless with matplotlib's object API) per provider and batch size, so users look rather than read.
Report files are checked before the measurement starts (:func:`dcd_deploy.reporting.check_output_path`)
and written whole or not at all, with the mode the umask gives (:func:`dcd_deploy.reporting.write_output`).
"""

from __future__ import annotations

import html
import inspect
import io
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .. import reporting
from ..reporting import check_output_path
from .results import ROW_DESCRIPTIONS, BenchResult, BenchRow

COLUMNS = ["session", "cold", "mean", "std", "min", "p50", "p90", "p95", "p99", "max", "img/s", "×static", "×eager"]
COLUMN_HELP = {
    "session": "session creation (ONNX Runtime) or model placement (PyTorch), ms",
    "cold": "first run after setup, ms",
    "mean": "mean of the timed runs, ms", "std": "sample standard deviation, ms", "min": "fastest run, ms",
    "p50": "median, ms", "p90": "90th percentile, ms", "p95": "95th percentile, ms", "p99": "99th percentile, ms",
    "max": "slowest run, ms",
    "img/s": "throughput: batch size / mean latency",
    "×static": "median over the static twin's median (same provider and batch): how far from the floor",
    "×eager": "median over PyTorch eager's median (same provider and batch)",
}

ERROR_COLUMN = "error"
ERROR_HELP = ("max |Δ| / max |ref| against the original network; int8 rows: top-1 agreement and mean logit cosine "
              "with the float32 network they were quantized from, on shifted calibration samples")


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def fmt_rate(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value >= 100:
        return f"{value:.0f}×"
    if value >= 10:
        return f"{value:.1f}×"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.3f}×"


def row_cells(row: BenchRow) -> list[str]:
    s = row.stats
    if s is None:
        return [fmt_ms(row.setup_s), fmt_ms(row.cold_s)] + ["—"] * (len(COLUMNS) - 2)
    return [
        fmt_ms(row.setup_s), fmt_ms(row.cold_s), fmt_ms(s.mean), fmt_ms(s.std), fmt_ms(s.min), fmt_ms(s.p50),
        fmt_ms(s.p90), fmt_ms(s.p95), fmt_ms(s.p99), fmt_ms(s.max), fmt_rate(s.throughput),
        fmt_ratio(row.vs_static), fmt_ratio(row.vs_eager),
    ]


def _measure_text(result: BenchResult) -> str:
    how = f"{result.runs} timed rounds" if result.runs is not None else f"{result.duration:g} s of timed rounds"
    return f"{how} after {result.warmup} warm-up round(s), rows interleaved round-robin"


def header_lines(result: BenchResult) -> list[str]:
    v, m = result.versions, result.machine
    h, w = result.input_size
    devices = "; ".join(f"{p}: {d}" for p, d in result.devices.items()) or "none available"
    return [
        f"model: {result.model}",
        f"source: {result.source}",
        f"input: {h}×{w}, batch sizes {', '.join(map(str, result.batches))}; {_measure_text(result)}",
        f"threads: {result.threads} (PyTorch, and ONNX Runtime intra-op with spinning off; inter-op 1)"
        + ("; CUDA graphs on" if result.cuda_graph else ""),
        f"machine: {m.get('cpu')} ({m.get('cores')} logical cores), {m.get('platform')}",
        f"devices: {devices}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"date: {m.get('date')}",
    ]


def _reasons(result: BenchResult) -> dict[str, int]:
    """Each distinct reason a row was not measured, numbered in order of appearance."""
    numbers: dict[str, int] = {}
    for row in result.rows:
        if not row.measured and row.reason and row.reason not in numbers:
            numbers[row.reason] = len(numbers) + 1
    return numbers


def preparation_lines(result: BenchResult) -> list[str]:
    lines = []
    for p in result.prepared:
        if p.failure:
            lines.append(f"{p.row}: failed")
        elif p.seconds:
            lines.append(f"{p.row}: {p.seconds:.1f} s" + (f" ({p.note})" if p.note else ""))
        elif p.note:
            lines.append(f"{p.row}: {p.note}")
    return lines


# ----------------------------------------------------------------------------------------------
# Terminal


def render_table(result: BenchResult, width: int = 120) -> str:
    """The terminal report: header, one table per provider and batch size, footnotes."""
    reasons = _reasons(result)
    name_w = max([len(r.row) for r in result.rows] + [len("row")]) + 2
    widths = [max(len(c), 7) for c in COLUMNS]
    with_error = any(r.int8 is not None for r in result.rows)  # int8 rows: their agreement beside the times
    error = (lambda text: f"  {text}") if with_error else (lambda text: "")
    out = ["dcd-deploy bench", *header_lines(result), "times in ms; ×static and ×eager compare medians (p50)", ""]
    for provider, batch, rows in result.groups():
        device = result.devices.get(provider)
        out.append(f"{provider} · batch {batch}" + (f" · {device}" if device else ""))
        out.append("row".ljust(name_w) + " ".join(c.rjust(wd) for c, wd in zip(COLUMNS, widths)) + error(ERROR_COLUMN))
        for row in rows:
            if row.measured:
                out.append(row.row.ljust(name_w) + " ".join(c.rjust(wd) for c, wd in zip(row_cells(row), widths))
                           + error(row.error_text()))
            else:
                out.append(row.row.ljust(name_w) + f"{row.status} [{reasons.get(row.reason or '', '?')}]")
        out.append("")
    for reason, n in reasons.items():
        out.extend(textwrap.wrap(f"[{n}] {reason}", width=width, subsequent_indent="    ", break_on_hyphens=False))
    prep = preparation_lines(result)
    if prep:
        out.append("")
        out.extend(textwrap.wrap("prepared: " + "; ".join(prep), width=width, subsequent_indent="    ",
                                 break_on_hyphens=False))
    for note in result.notes:
        out.extend(textwrap.wrap(f"note: {note}", width=width, subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# JSON


def to_json(result: BenchResult) -> str:
    """Strict JSON (no Infinity/NaN: they become null) of :meth:`BenchResult.to_dict`."""
    return reporting.to_json(result.to_dict())


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(result: BenchResult) -> str:
    reasons = _reasons(result)
    out = [f"# dcd-deploy bench: {_md_escape(result.model)}", ""]
    out += [f"- {_md_escape(line)}" for line in header_lines(result)]
    out += ["", "Times in milliseconds; ×static and ×eager compare medians (p50).", ""]
    for provider, batch, rows in result.groups():
        device = result.devices.get(provider)
        out += [f"## {provider} · batch {batch}" + (f" · {_md_escape(device)}" if device else ""), ""]
        out.append("| row | " + " | ".join(COLUMNS) + f" | {ERROR_COLUMN} |")
        out.append("|---|" + "---:|" * (len(COLUMNS) + 1))
        for row in rows:
            if row.measured:
                out.append(f"| {row.row} | " + " | ".join(row_cells(row)) + f" | {row.error_text()} |")
            else:
                cells = [f"{row.status} [{reasons.get(row.reason or '', '?')}]"] + ["—"] * len(COLUMNS)
                out.append(f"| {row.row} | " + " | ".join(cells) + " |")
        out.append("")
    if reasons:
        out += ["## Not measured", ""]
        out += [f"{n}. {_md_escape(reason)}" for reason, n in reasons.items()]
        out.append("")
    out += ["## Rows", ""]
    out += [f"- **{row}**: {ROW_DESCRIPTIONS[row]}" for row in dict.fromkeys(r.row for r in result.rows)]
    out += ["", "## Columns", ""]
    out += [f"- **{c}**: {COLUMN_HELP[c]}" for c in COLUMNS] + [f"- **{ERROR_COLUMN}**: {ERROR_HELP}"]
    prep = preparation_lines(result)
    if prep:
        out += ["", "## Preparation", ""] + [f"- {_md_escape(p)}" for p in prep]
    if result.notes:
        out += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in result.notes]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# HTML

ROW_COLOURS = {"eager": "#7f7f7f", "eager-lowered": "#bcbd22", "naive": "#d62728", "dcd-deploy": "#1f77b4",
               "static": "#2ca02c", "onnx": "#1f77b4"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.static td { background: #f1f9f1; } td.why { color: #a33; }
.meta td:first-child { color: #666; padding-right: 1.5em; }
.group { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #666; }
.small { font-size: 0.85em; color: #555; }
"""


def distribution_figure(rows: list[BenchRow], title: str) -> Any:
    """A matplotlib Figure: a horizontal box plot of each measured row's run times (ms), every run a dot.

    None when no row was measured.
    """
    from matplotlib.figure import Figure  # the object API: headless, no pyplot backend or global state
    from matplotlib.ticker import FuncFormatter

    measured = [r for r in rows if r.stats is not None]
    if not measured:
        return None
    fig = Figure(figsize=(7.5, 0.55 * len(measured) + 1.1))
    ax = fig.subplots()
    data = [[t * 1e3 for t in r.stats.times_s] for r in measured]  # type: ignore[union-attr]
    positions = list(range(len(measured), 0, -1))
    horizontal = {"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters else {"vert": False}
    box = ax.boxplot(data, positions=positions, widths=0.55, showfliers=False, patch_artist=True,
                     medianprops={"color": "black"}, **horizontal)
    for patch, r in zip(box["boxes"], measured):
        patch.set_facecolor(ROW_COLOURS.get(r.row, "#9467bd"))
        patch.set_alpha(0.35)
    jitter = np.random.default_rng(0)
    for pos, values, r in zip(positions, data, measured):
        ys = pos + jitter.uniform(-0.18, 0.18, len(values))
        ax.scatter(values, ys, s=7, color=ROW_COLOURS.get(r.row, "#9467bd"), alpha=0.7, linewidths=0, zorder=3)
    static = next((r for r in measured if r.row == "static"), None)
    if static is not None:
        ax.axvline(static.stats.p50 * 1e3, color=ROW_COLOURS["static"], linestyle="--", linewidth=1,  # type: ignore[union-attr]
                   label="static twin median (the floor)")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_yticks(positions)
    ax.set_yticklabels([r.row for r in measured])
    ax.set_xlabel("latency per run (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    lo, hi = min(min(d) for d in data), max(max(d) for d in data)
    if lo > 0 and hi / lo > 20:  # rows an order of magnitude apart: a log axis keeps the fast ones readable
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_xlabel("latency per run (ms, log scale)")
    else:
        ax.set_xlim(left=max(0.0, lo - 0.1 * (hi - lo)))
    fig.tight_layout()
    return fig


def distribution_svg(rows: list[BenchRow], title: str) -> str:
    """:func:`distribution_figure` as inline SVG markup (text kept as text); empty when nothing was measured."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig = distribution_figure(rows, title)
        if fig is None:
            return ""
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.find("<svg"):]


def to_html(result: BenchResult) -> str:
    e = html.escape
    reasons = _reasons(result)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>dcd-deploy bench: {e(result.model)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>dcd-deploy bench: {e(result.model)}</h1>",
        '<table class="meta">',
    ]
    for line in header_lines(result):
        key, _, value = line.partition(": ")
        parts.append(f"<tr><td>{e(key)}</td><td>{e(value)}</td></tr>")
    parts.append("</table>")
    parts.append('<p class="small">Times in milliseconds. ×static and ×eager compare medians (p50) with the static '
                 "twin (the floor a DCD model can hope for) and with PyTorch eager, same provider and batch size. "
                 "Each dot in a plot is one timed run.</p>")
    for provider, batch, rows in result.groups():
        device = result.devices.get(provider)
        title = f"{provider} · batch {batch}" + (f" · {device}" if device else "")
        parts.append(f"<h2>{e(title)}</h2>")
        head = "".join(f'<th class="num" title="{e(COLUMN_HELP[c])}">{e(c)}</th>' for c in COLUMNS)
        parts.append(f'<table><tr><th>row</th>{head}<th class="num" title="{e(ERROR_HELP)}">{e(ERROR_COLUMN)}</th></tr>')
        for row in rows:
            cls = ' class="static"' if row.row == "static" else ""
            name = f'<td title="{e(ROW_DESCRIPTIONS[row.row])}">{e(row.row)}</td>'
            if row.measured:
                err = row.error_text()
                cells = "".join(f'<td class="num">{e(c)}</td>' for c in row_cells(row))
                parts.append(f"<tr{cls}>{name}{cells}<td class=\"num\">{err}</td></tr>")
            else:
                parts.append(f'<tr{cls}>{name}<td class="why" colspan="{len(COLUMNS) + 1}">{e(row.status)}: '
                             f"{e(row.reason or '')}</td></tr>")
        parts.append("</table>")
        svg = distribution_svg(rows, title)
        if svg:
            parts.append(f"<figure>{svg}<figcaption>Latency distribution per row ({e(title)}): box = quartiles, "
                         "whiskers = 1.5 IQR, dots = runs.</figcaption></figure>")
    if reasons:
        parts.append("<h2>Not measured</h2><ol>" + "".join(f"<li>{e(r)}</li>" for r in reasons) + "</ol>")
    parts.append("<h2>Rows</h2><ul>" + "".join(
        f"<li><b>{e(r)}</b>: {e(ROW_DESCRIPTIONS[r])}</li>" for r in dict.fromkeys(x.row for x in result.rows)) + "</ul>")
    prep = preparation_lines(result)
    if prep:
        parts.append("<h2>Preparation</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in prep) + "</ul>")
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in result.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------
# Files

RENDERERS = {"json": to_json, "markdown": to_markdown, "html": to_html}


def check_report_paths(**paths: str | os.PathLike | None) -> None:
    """Raise :class:`~dcd_deploy.errors.OutputError` now, before a long measurement, for a report that
    could not be written (``json=``, ``markdown=``, ``html=``)."""
    for fmt, path in paths.items():
        if fmt not in RENDERERS:
            raise ValueError(f"unknown report format {fmt!r}")
        if path is not None:
            check_output_path(path, f"--{fmt} report")


def write_reports(result: BenchResult, **paths: str | os.PathLike | None) -> list[Path]:
    """Write each requested format (``json=``, ``markdown=``, ``html=``), each file whole or not at all
    and with the mode the umask gives; returns the paths written."""
    check_report_paths(**paths)
    return [reporting.write_output(path, RENDERERS[fmt](result), what=f"{fmt} report")
            for fmt, path in paths.items() if path is not None]
