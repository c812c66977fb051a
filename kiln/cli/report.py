"""``kiln compile --report FILE.md|FILE.html``: what the compiler did, for a person to read.

The report holds the pipeline's passes (time, nodes before and after), the kernels with the
fused groups and the source nodes each holds, the layout pass's choices (O3), the memory
plan, and a per-kernel profile of the artifact on random inputs; the HTML form also draws
the optimized graph where Graphviz is installed. One list of sections renders as Markdown or
as a self-contained HTML page.
"""

from __future__ import annotations

import html
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs
    head: list[str] = field(default_factory=list)  # a table's header ...
    rows: list[list[str]] = field(default_factory=list)  # ... and rows
    svg: str = ""  # a picture (HTML only)


def build_report(compiled: Any, graph: Any, optimized: Any, records: list, args: Any,
                 seconds: float) -> list[Section]:
    """The sections of a compile's report. ``compiled``: the CompiledModel; ``graph`` the
    model as given, ``optimized`` what the pipeline made of it; ``records`` the passes'
    PassRecords."""
    build = compiled.build
    out = [Section("Model", [
        f"`{args.model}`: {len(graph.nodes)} nodes, inputs "
        + ", ".join(f"`{v.name}: {v.type}`" for v in graph.inputs)
        + f"; compiled at O{args.opt_level} for `{build.target.to_dict()}` in "
        f"{seconds:.1f} s into {len(build.kernels)} kernel calls "
        f"({len(set(k.func for k in build.kernels))} distinct kernels)."])]
    out.append(Section("Passes", ["The pipeline, in order (ms: the pass's own time)."],
                       ["pass", "ms", "nodes before", "nodes after"],
                       [[r.name, f"{r.seconds * 1e3:.1f}", str(r.nodes_before),
                         str(r.nodes_after)] for r in records]))
    patterns = Counter(str(n.attrs.get("pattern") or "group") for n in optimized.nodes
                       if n.op == "fused")
    out.append(Section("Fused groups", [
        f"{sum(patterns.values())} fused groups: " + ", ".join(
            f"{count} x `{p}`" for p, count in patterns.most_common()) if patterns else
        "No fused groups."],
        ["#", "kernel", "source nodes"],
        [[str(i), f"`{k.func}`", "<br>".join(_md(s) for s in k.sources)]
         for i, k in enumerate(build.kernels)]))
    layout = compiled.reports.get("layout")
    if layout is not None and (layout.choices or layout.notes):
        out.append(Section("Layout choices", [
            f"{len(layout.choices)} convolutions blocked, {layout.transforms} layout "
            "transforms at run time."] + [_md(n) for n in layout.notes],
            ["value", "convolution", "in block", "out block", "tile", "chosen by", "ms"],
            [[f"`%{c.value}`", _md(c.problem.key()), str(c.in_block), str(c.choice.block),
              str(c.choice.tile), c.choice.source,
              "" if c.choice.seconds is None else f"{c.choice.seconds * 1e3:.3f}"]
             for c in layout.choices]))
    model = compiled.model
    memory = model.memory_report()
    out.append(Section("Memory", [], ["what", "MiB", ""], [
        ["intermediates (one arena)", f"{memory['arena_bytes'] / 2**20:.2f}",
         f"{memory['intermediates']} values in {memory['buffers']} buffers "
         f"({memory['naive_bytes'] / 2**20:.2f} MiB with a buffer each)"],
        ["weights", f"{memory['constant_bytes'] / 2**20:.2f}", ""],
        ["small inputs/outputs", f"{memory['io_buffer_bytes'] / 2**20:.2f}", ""]]))
    out.append(_profile(model))
    return out


def _profile(model: Any, repeat: int = 10) -> Section:
    from kiln.cli.common import random_array

    rng = np.random.default_rng(0)
    inputs = {i.name: random_array(tuple(i.shape), i.dtype, rng) for i in model.inputs}
    t0 = time.perf_counter()
    latency = model.benchmark(inputs, repeat=repeat)
    profile = sorted(model.profile(inputs, repeat=repeat), key=lambda k: -k.seconds)
    total = sum(k.seconds for k in profile) or 1.0
    return Section("Per-kernel profile", [
        f"On random inputs: median latency {latency * 1e3:.3f} ms over {repeat} runs; each "
        f"kernel the median of {repeat} calls, slowest first ({time.perf_counter() - t0:.1f} s "
        "to measure)."],
        ["kernel", "ms", "%", "GFLOP/s", "source nodes"],
        [[f"`{k.func}`", f"{k.seconds * 1e3:.3f}", f"{100 * k.seconds / total:.1f}",
          f"{k.gflops:.1f}" if k.gflops else "-", "<br>".join(_md(s) for s in k.sources)]
         for k in profile])


def _md(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(sections: list[Section], title: str) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.text:
            lines += [p, ""]
        if s.head:
            lines.append("| " + " | ".join(s.head) + " |")
            lines.append("|" + "---|" * len(s.head))
            lines += ["| " + " | ".join(row) + " |" for row in s.rows]
            lines.append("")
    return "\n".join(lines)


def to_html(sections: list[Section], title: str) -> str:
    def cell(text: str) -> str:  # the Markdown cells' `code`, <br> and \| in HTML
        escaped = html.escape(text.replace("\\|", "|")).replace("&lt;br&gt;", "<br>")
        parts = escaped.split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{cell(p)}</p>" for p in s.text]
        if s.svg:
            body.append(f'<div class="picture">{s.svg}</div>')
        if s.head:
            body.append("<table><tr>" + "".join(f"<th>{cell(h)}</th>" for h in s.head)
                        + "</tr>")
            body += ["<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>"
                     for row in s.rows]
            body.append("</table>")
    style = ("body{font-family:Helvetica,Arial,sans-serif;margin:2em;max-width:80em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:90%;text-align:left;vertical-align:top}code{font-size:95%}"
             ".picture svg{max-width:100%;height:auto}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(path: str, sections: list[Section], title: str, optimized: Any) -> str:
    """Write the report as Markdown (``.md``) or HTML (``.html``, with a picture of the
    optimized graph where Graphviz's dot is installed); returns what it wrote."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".md":
        text = to_markdown(sections, title)
    elif ext in (".html", ".htm"):
        svg = _svg(optimized)
        if svg:
            sections = sections[:1] + [Section("Optimized graph", svg=svg)] + sections[1:]
        text = to_html(sections, title)
    else:
        from kiln.errors import CLIError

        raise CLIError(f"--report {path!r}: write FILE.md (Markdown) or FILE.html")
    with open(path, "w") as f:
        f.write(text)
    return f"wrote the report to {path}"


def _svg(graph: Any) -> str:
    """The graph drawn as SVG by Graphviz's dot, or "" where it is not installed."""
    import shutil
    import subprocess

    from kiln.ir.picture import to_dot

    if not shutil.which("dot"):
        return ""
    done = subprocess.run(["dot", "-Tsvg"], input=to_dot(graph, weights=False).encode(),
                          capture_output=True)
    if done.returncode != 0:
        return ""
    text = done.stdout.decode(errors="replace")
    return text[text.find("<svg"):]
