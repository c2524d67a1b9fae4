"""The run report's charts: matplotlib figures rendered as inline SVG strings.

matplotlib is imported inside `_pyplot()`, only when a report is written, so that importing
the engine (every job start-up, every worker) does not pay for it. The Agg backend is chosen
explicitly: a worker has no display. Each SVG is deterministic for the same data (no date in
its metadata, ids hashed from a per-chart salt), so a re-rendered report is byte-identical,
and its text stays text (`svg.fonttype: none`), which keeps the file small.
"""
from __future__ import annotations

import io

__all__ = ["throughput_svg", "latency_histogram_svg", "shard_latency_svg", "batch_sizes_svg",
           "model_loads_svg"]

_WIDTH, _HEIGHT = 7.5, 2.8  # inches at 100 dpi: 750 x 280 px


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _svg(fig, name: str) -> str:
    import matplotlib
    plt = _pyplot()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"report-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None},
                    bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # without the XML declaration and DOCTYPE


def _figure(height: float = _HEIGHT):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(_WIDTH, height), dpi=100)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _bars_height(bars: int) -> float:
    """Inches for a horizontal bar chart: room for each bar's label, the title and legend."""
    return 0.35 * bars + 1.4


def _legend_below(ax, columns: int) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=columns, fontsize="small",
              frameon=False)


def throughput_svg(profile: dict, start_time: float) -> str:
    """Records scored per second (bars, one per interval; an interval without a model call
    has none) and model calls per interval (dots) over the run's wall time."""
    fig, ax = _figure()
    interval = profile["interval_seconds"]
    points = profile["timeline"]
    t = [p["start"] - start_time for p in points]
    ax.bar(t, [p["records"] / interval for p in points], width=interval, align="edge",
           label="records/s", color="tab:blue", alpha=0.8)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("records scored per second")
    other = ax.twinx()
    other.plot([x + interval / 2 for x in t], [p["calls"] for p in points], "o",
               label="model calls", color="tab:orange", markersize=4)
    other.set_ylabel(f"model calls per {interval:g} s")
    other.set_ylim(bottom=0)
    ax.set_title(f"Throughput over the run ({interval:g} s intervals)")
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left", fontsize="small")
    return _svg(fig, "throughput")


def latency_histogram_svg(histogram: dict) -> str:
    """Model calls by latency (the bins of `transforms.metrics`; a log axis for log bins)."""
    fig, ax = _figure()
    edges, counts = histogram["edges_ms"], histogram["counts"]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="tab:blue",
           edgecolor="white")
    if len(edges) > 2 and edges[-1] > 10 * edges[0]:  # log bins read best on a log axis
        ax.set_xscale("log")
    ax.set_xlabel("model call latency (ms)")
    ax.set_ylabel("model calls")
    ax.set_title("Model-call latency distribution")
    return _svg(fig, "latency")


def shard_latency_svg(rows: list[dict], labels: list[str]) -> str:
    """p50 / p95 / p99 model-call latency per shard (grouped bars)."""
    fig, ax = _figure(_bars_height(len(rows)))
    n = len(rows)
    height = 0.27
    for i, (q, color) in enumerate((("p50", "tab:green"), ("p95", "tab:orange"),
                                    ("p99", "tab:red"))):
        values = [(r["latency_ms"].get(q) or 0.0) for r in rows]
        ax.barh([j + (i - 1) * height for j in range(n)], values, height=height, label=q,
                color=color)
    ax.set_yticks(range(n), labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("model call latency (ms)")
    ax.set_title("Latency percentiles per shard")
    _legend_below(ax, 3)
    return _svg(fig, "shard-latency")


def batch_sizes_svg(sizes: list[dict]) -> str:
    """Model calls per batch size (records per call)."""
    fig, ax = _figure()
    labels = [str(b["min"]) if b["min"] == b["max"] else f"{b['min']}-{b['max']}"
              for b in sizes]
    ax.bar(range(len(sizes)), [s["calls"] for s in sizes], color="tab:purple")
    ax.set_xticks(range(len(sizes)), labels, rotation=45 if len(sizes) > 8 else 0,
                  fontsize="small")
    ax.set_xlabel("records per model call")
    ax.set_ylabel("model calls")
    ax.set_title("Batch sizes used")
    return _svg(fig, "batch-sizes")


def model_loads_svg(loads: list[dict]) -> str:
    """Staging and loading time of the model per worker process (stacked bars)."""
    fig, ax = _figure(_bars_height(len(loads)))
    labels = [f"{r.get('host', '?')}:{r.get('pid', '?')}" for r in loads]
    stage = [r.get("stage_seconds") or 0.0 for r in loads]
    load = [r.get("load_seconds") or 0.0 for r in loads]
    ys = range(len(loads))
    ax.barh(ys, stage, label="stage (copy)", color="tab:gray")
    ax.barh(ys, load, left=stage, label="load", color="tab:blue")
    ax.set_yticks(ys, labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Model load time per worker process")
    _legend_below(ax, 2)
    return _svg(fig, "model-loads")
