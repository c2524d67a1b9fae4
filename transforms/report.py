"""OUTPUT/report.html: one self-contained page about a run, rendered from its metrics files.

The page holds the accounting (records in = predicted + errors, by error type and by shard),
the model's provenance (the manifest's model section, the signature and where the feature
spec came from), throughput over the run, the model-call latency distribution and per-shard
percentiles, the batch sizes used, the model's load time per worker process, and the first
error rows. It opens offline: styles are inline, charts are inline SVG (`report_charts`), and
there is no script and no reference to any other file. Every value taken from the run (paths,
messages, payloads) is HTML-escaped, since error payloads are whatever the input held.

It is rendered twice from the same files: at finalize from the staged files
(`staged_report`, called by `transforms.write.FinalizeDoFn`), and by
`python -m pipeline report OUTPUT` from a finished output dir (`render_output_dir`), local
or gs://. Numbers carry `data-metric` / `data-field` attributes with their raw values, so a
program can read them back without parsing the formatted text.
"""
from __future__ import annotations

import html
import json
from typing import Callable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import report_charts

__all__ = ["REPORT", "MAX_ERROR_EXAMPLES", "staged_report", "render_output_dir", "render_html"]

REPORT = "report.html"
MAX_ERROR_EXAMPLES = 20
_MAX_PAYLOAD_CHARS = 400
_SHARD_FILES = "metrics/shard_latency-"
_LOAD_FILES = "metrics/model_loads-"
_PROFILE = "metrics/run_profile.json"


def _join(root: str, relative: str) -> str:
    return root.rstrip("/") + "/" + relative


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def _jsonl(paths: list[str]) -> list[dict]:
    return [json.loads(line) for p in paths for line in _read(p).splitlines() if line.strip()]


def _first_rows(paths: list[str], limit: int) -> list[dict]:
    """The first `limit` rows of the files, in order, reading no more of them than needed."""
    rows: list[dict] = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
                    if len(rows) == limit:
                        return rows
    return rows


def _sources_read(sources: dict[str, str]) -> list[str]:
    """The files (of {final relative name: path}) that the report reads."""
    return [p for rel, p in sorted(sources.items())
            if rel.startswith((_SHARD_FILES, _LOAD_FILES, "errors-")) or rel == _PROFILE]


def _gather(sources: dict[str, str], summary: dict, manifest: dict) -> dict:
    def family(prefix: str) -> list[str]:
        return [p for rel, p in sorted(sources.items()) if rel.startswith(prefix)]
    profile = json.loads(_read(sources[_PROFILE])) if _PROFILE in sources else None
    return {"summary": summary, "manifest": manifest,
            "shards": sorted(_jsonl(family(_SHARD_FILES)), key=lambda r: r["shard"]),
            "loads": _jsonl(family(_LOAD_FILES)), "profile": profile,
            "errors": _first_rows(family("errors-"), MAX_ERROR_EXAMPLES)}


def _write(path: str, text: str) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(text.encode("utf-8"))


def staged_report(staging: str, sources: dict[str, str], summary: dict,
                  manifest: Callable[[], dict]) -> str:
    """Renders report.html into the staging dir from the staged files ({final relative name:
    staged path}) and returns its path. When a file it reads is gone (a retried finalize that
    already moved it), renders nothing: the report of the attempt that moved it is staged or
    already in place."""
    path = _join(staging, REPORT)
    if all(FileSystems.exists(p) for p in _sources_read(sources)):
        _write(path, render_html(_gather(sources, summary, manifest())))
    return path


def render_output_dir(output: str) -> str:
    """Renders OUTPUT/report.html again from a finished run's files; returns its path."""
    output = output.rstrip("/")
    sources = {}
    for pattern in ("errors-*-of-*.jsonl", "metrics/*-of-*.jsonl", _PROFILE):
        for match in FileSystems.match([_join(output, pattern)])[0].metadata_list:
            sources[match.path[len(output) + 1:]] = match.path
    summary = json.loads(_read(_join(output, "metrics/summary.json")))
    manifest = json.loads(_read(_join(output, "manifest.json")))
    path = _join(output, REPORT)
    _write(path, render_html(_gather(sources, summary, manifest)))
    return path


# --- HTML -----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:32px}table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.muted{color:#666}pre,code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
td.payload{max-width:480px;word-break:break-all;font-family:ui-monospace,monospace;
font-size:.8em}figure{margin:12px 0}svg{max-width:100%;height:auto}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _num(value, attr: str, name: str) -> str:
    raw = "" if value is None else json.dumps(value)
    return f'<td class="n" {attr}="{_e(name)}" data-value="{_e(raw)}">{_e(_fmt(value))}</td>'


def _kv_table(rows: list[tuple[str, str, object]]) -> str:
    """(label, metric name, value) rows; numbers right-aligned, with their raw value."""
    out = []
    for label, name, value in rows:
        if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
            cell = _num(value, "data-metric", name)
        else:
            cell = (f'<td data-metric="{_e(name)}" data-value="{_e(json.dumps(value))}">'
                    f"{_e(_fmt(value))}</td>")
        out.append(f"<tr><th>{_e(label)}</th>{cell}</tr>")
    return "<table>" + "".join(out) + "</table>"


def _figure(svg: str, name: str) -> str:
    return f'<figure data-chart="{_e(name)}">{svg}</figure>'


def _accounting(s: dict) -> str:
    good = s["within_error_budget"] and s["accounted"]
    status = ("succeeded (_SUCCESS written)" if good else
              "records not accounted for (no _SUCCESS)" if not s["accounted"] else
              "over the error budget (no _SUCCESS)")
    parts = [f'<p>Status: <span class="{"ok" if good else "bad"}" data-metric="status">'
             f'{_e(status)}</span></p>',
             _kv_table([("records in", "records_in", s["records_in"]),
                        ("predicted", "predicted", s["predicted"]),
                        ("errors", "errors", s["errors"]),
                        ("records in = predicted + errors", "accounted", s["accounted"]),
                        ("counts exact", "counts_exact", s["counts_exact"]),
                        ("error rate", "error_rate", s["error_rate"]),
                        ("error budget (max rate)", "max_error_rate", s["max_error_rate"])])]
    by_type = s.get("errors_by_type") or {}
    if by_type:
        rows = "".join(f'<tr data-error-type="{_e(t)}"><td>{_e(t)}</td>'
                       f'{_num(n, "data-field", "count")}</tr>'
                       for t, n in sorted(by_type.items()))
        parts.append("<h3>Errors by type</h3><table><tr><th>error type</th><th>rows</th></tr>"
                     f"{rows}</table>")
    if s.get("note"):
        parts.append(f'<p class="muted">{_e(s["note"])}</p>')
    return "".join(parts)


def _shards_table(shards: list[dict]) -> str:
    head = ("<tr><th>shard</th><th>records</th><th>predicted</th><th>errors</th>"
            "<th>errors by type</th><th>model calls</th><th>p50 ms</th><th>p95 ms</th>"
            "<th>p99 ms</th><th>max ms</th></tr>")
    rows = []
    for r in shards:
        lat = r.get("latency_ms") or {}
        types = ", ".join(f"{t}: {n}" for t, n in sorted((r.get("errors_by_type") or {})
                                                          .items()))
        rows.append(
            f'<tr data-shard="{_e(r["shard"])}"><td><code>{_e(r["shard"])}</code></td>'
            + _num(r["records"], "data-field", "records")
            + _num(r["predicted"], "data-field", "predicted")
            + _num(r["errors"], "data-field", "errors")
            + f'<td data-field="errors_by_type">{_e(types)}</td>'
            + _num(r.get("batches"), "data-field", "model_calls")
            + "".join(_num(lat.get(q), "data-field", q) for q in ("p50", "p95", "p99", "max"))
            + "</tr>")
    return f'<table data-table="shards">{head}{"".join(rows)}</table>'


def _provenance(s: dict, m: dict) -> str:
    model = m.get("model") or {}
    rows = [("model", "model_path", model.get("path")),
            ("version dir", "model_version_path", model.get("version_path")),
            ("version", "model_version", model.get("version")),
            ("kind", "model_kind", model.get("kind")),
            ("signature", "signature", model.get("signature")),
            ("call convention", "signature_convention", s.get("signature_convention")),
            ("feature spec from", "feature_spec_source", s.get("feature_spec_source")),
            ("features", "feature_count",
             len(((s.get("feature_spec") or {}).get("features")) or {}) or None),
            ("code version", "code_version", m.get("code_version")),
            ("input files", "input_files", s.get("input_files")),
            ("input bytes", "input_bytes", s.get("input_bytes")),
            ("input format", "input_format", s.get("input_format")),
            ("output format", "output_format", s.get("output_format"))]
    parts = [_kv_table(rows)]
    optimized = model.get("optimized")
    parts.append("<h3>Optimized model record</h3>" + (
        f'<pre data-metric="optimized">{_e(json.dumps(optimized, indent=2))}</pre>'
        if optimized else '<p class="muted" data-metric="optimized">not an optimized model '
        "(no record in the model's assets.extra)</p>"))
    return "".join(parts)


def _performance(d: dict) -> str:
    s, profile = d["summary"], d["profile"]
    lat = s.get("latency_ms") or {}
    parts = [_kv_table([("wall seconds", "wall_seconds", s.get("wall_seconds")),
                        ("examples per second", "examples_per_second",
                         s.get("examples_per_second")),
                        ("model calls", "model_calls", s.get("model_calls")),
                        ("mean µs per example in the model", "mean_us_per_example",
                         s.get("mean_us_per_example")),
                        ("latency p50 ms", "latency_p50_ms", lat.get("p50")),
                        ("latency p95 ms", "latency_p95_ms", lat.get("p95")),
                        ("latency p99 ms", "latency_p99_ms", lat.get("p99")),
                        ("latency max ms", "latency_max_ms", lat.get("max"))])]
    if profile is None:
        parts.append('<p class="muted">No metrics/run_profile.json: this run predates the '
                     "run profile, so there is no timeline, histogram or batch sizes.</p>")
    elif not profile["timeline"]:
        parts.append('<p class="muted">No model call succeeded: nothing to plot.</p>')
    else:
        parts.append("<h3>Throughput over the run</h3>"
                     + _figure(report_charts.throughput_svg(profile, s["start_time"]),
                               "throughput"))
        parts.append("<h3>Model-call latency</h3>"
                     + _figure(report_charts.latency_histogram_svg(
                         profile["latency_histogram"]), "latency_histogram"))
    shards = [r for r in d["shards"] if r.get("batches")]
    if shards:
        parts.append(_figure(report_charts.shard_latency_svg(
            shards, [_short(r["shard"]) for r in shards]), "shard_latency"))
    if profile and profile["batch_sizes"]:
        sizes = "".join(f"<tr><td>{_e(_size_label(b))}</td>"
                        f'{_num(b["calls"], "data-field", "calls")}</tr>'
                        for b in profile["batch_sizes"])
        parts.append("<h3>Batch sizes used</h3>"
                     + _figure(report_charts.batch_sizes_svg(profile["batch_sizes"]),
                               "batch_sizes")
                     + '<table data-table="batch_sizes"><tr><th>records per call</th>'
                     f"<th>model calls</th></tr>{sizes}</table>")
    return "".join(parts)


def _size_label(sizes: dict) -> str:
    return str(sizes["min"]) if sizes["min"] == sizes["max"] else f"{sizes['min']}-{sizes['max']}"


def _short(shard: str, keep: int = 48) -> str:
    return shard if len(shard) <= keep else "…" + shard[-(keep - 1):]


def _loads(loads: list[dict]) -> str:
    if not loads:
        return '<p class="muted">No model load was recorded.</p>'
    rows = "".join(f'<tr><td>{_e(r.get("host"))}</td><td>{_e(r.get("pid"))}</td>'
                   + _num(r.get("stage_seconds"), "data-field", "stage_seconds")
                   + _num(r.get("load_seconds"), "data-field", "load_seconds") + "</tr>"
                   for r in sorted(loads, key=lambda r: (str(r.get("host")), r.get("pid") or 0)))
    return (_figure(report_charts.model_loads_svg(loads), "model_loads")
            + '<table data-table="model_loads"><tr><th>host</th><th>pid</th>'
            f"<th>stage s</th><th>load s</th></tr>{rows}</table>")


def _error_examples(rows: list[dict], total: int) -> str:
    if not rows:
        return "<p>No error rows.</p>"
    out = []
    for r in rows:
        payload = r.get("payload")
        shown = None if payload is None else str(payload)[:_MAX_PAYLOAD_CHARS]
        cut = payload is not None and (len(str(payload)) > _MAX_PAYLOAD_CHARS
                                       or r.get("payload_truncated"))
        where = r.get("line", r.get("index"))
        out.append(f'<tr data-error-row><td><code>{_e(r.get("shard"))}</code></td>'
                   f'<td class="n">{_e(where)}</td><td>{_e(r.get("error_type"))}</td>'
                   f'<td>{_e(r.get("message"))}</td><td class="payload">{_e(shown)}'
                   f'{" …" if cut else ""}</td></tr>')
    return (f"<p>The first {len(rows)} of {total:,} error rows (all of them are in "
            "errors-*.jsonl; binary payloads are base64).</p>"
            '<table data-table="errors"><tr><th>shard</th><th>record / line</th>'
            "<th>type</th><th>message</th><th>payload</th></tr>" + "".join(out) + "</table>")


def render_html(d: dict) -> str:
    """The page for gathered run data (summary, manifest, shards, loads, profile, errors)."""
    s, m = d["summary"], d["manifest"]
    sections = [
        ("accounting", "Accounting", _accounting(s)),
        ("shards", "By shard", _shards_table(d["shards"])),
        ("model", "Model and feature spec", _provenance(s, m)),
        ("performance", "Throughput and latency", _performance(d)),
        ("loads", "Model loads per worker process", _loads(d["loads"])),
        ("errors", "First error rows", _error_examples(d["errors"], s["errors"])),
    ]
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>batch-predict run {_e(s['run_id'])}</title><style>{_CSS}</style></head>"
            f"<body><h1>batch-predict run <code data-metric=\"run_id\">{_e(s['run_id'])}"
            f"</code></h1><p class=\"muted\">model <code>{_e(s.get('model'))}</code>, "
            f"{_e(s.get('input_files'))} input files; see manifest.json for every output "
            f"file.</p>{body}</body></html>\n")
