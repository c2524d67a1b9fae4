"""`python -m pipeline optimize --model M --output DIR`: an inference-optimized copy of a model.

Stages, one line each: load (the way the pipeline loads it: newest version of an export base
dir, staged from gs://), freeze (variables become constants; lookup tables and their
vocabulary assets are kept), optimize (Grappler for the signatures' outputs, batch-norm
folding, optional float16/bfloat16 weight storage), check (the optimized model, loaded back
from disk, scores the same records as the original: spec, outputs, latency, load time,
size), write (rename into --output). Then a table of the figures.

It refuses (exit 2, one line, nothing at --output) a model whose outputs are outside the
tolerance or that is slower, unless --force; an --output that exists and is not empty; and
writes only inside a temporary dir next to --output, renamed to --output at the end.

The written SavedModel carries `assets.extra/batch_predict_optimize.json`
(`transforms.optimize.read_optimization`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from pipeline.run import EXIT_OK, EXIT_USAGE
from transforms.errors import (FeatureSpecError, ModelError, OptionsError, OutputError,
                               UserError)
from transforms.optimize import (GRAPPLER_PASSES, QUANTIZE_MODES, RECORD_FILE,
                                 fold_batch_norms, freeze_model, optimize_graph,
                                 quantize_weights, write_record, write_saved_model)

__all__ = ["TOLERANCES", "SLOWER_RATIO", "NOISE_FLOOR_MS", "Tolerance", "OutputDiff",
           "Figures", "synthetic_rows", "compare_outputs", "verdict", "optimize", "main"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float             # float outputs: |opt - orig| <= atol + rtol * |orig|, elementwise
    atol: float
    max_changed: float      # other outputs (ints, bools, strings): fraction of records that
                            # may differ (0: exact)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Lossless passes reorder float arithmetic at most (fused kernels, folded constants): a few
# float32 ulps. Weight-only quantization rounds every weight to 11 (float16) or 8 (bfloat16)
# significant bits, so floats move by about that relative amount per layer, and a categorical
# output derived from a float near its threshold (argmax, score > 0.5) may flip.
TOLERANCES = {
    "none": Tolerance(rtol=1e-5, atol=1e-6, max_changed=0.0),
    "float16": Tolerance(rtol=1e-2, atol=1e-2, max_changed=0.01),
    "bfloat16": Tolerance(rtol=5e-2, atol=5e-2, max_changed=0.02),
}
# slower = the optimized median call latency above the original's by more than 5% AND by more
# than the noise floor: sub-millisecond calls on a shared machine jitter by more than 5%
SLOWER_RATIO = 1.05
NOISE_FLOOR_MS = 0.5


@dataclasses.dataclass
class OutputDiff:
    name: str
    dtype: str
    max_abs: float | None      # floats only
    max_rel: float | None
    changed: float             # fraction of records with any differing value (non-floats:
                               # not equal; floats: outside the tolerance)
    within: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Figures:
    batch: int
    calls: int
    latency_ms: tuple[float, float]     # (original, optimized) median per batch
    load_s: tuple[float, float]
    size_bytes: tuple[int, int]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def synthetic_rows(spec, n: int, seed: int = 0, plain: bool = False) -> list[dict]:
    """`n` varied records for a feature spec, from a seeded RNG: floats normal around 0 with
    a few large ones, ints mostly small with some over a wide range, strings from a small
    vocabulary plus random ones; features with a default (and var-length ones) absent from
    some records. `plain`: floats N(0, 1), ints 0 or 1, vocabulary strings only (for models
    that look ints up in small tables)."""
    rng = np.random.default_rng(seed)
    words = ["a", "de", "fr", "us", "jp", "phone", "desktop", "red", "blue", "x y",
             "\u00fcber", ""]
    rows = []
    for i in range(n):
        row = {}
        for f in spec.values():
            if f.kind == "fixed":
                if f.default is not None and rng.random() < 0.15:
                    continue
                count = f.num_values
            else:
                count = int(rng.integers(0, 4))
                if count == 0:
                    continue
            if f.dtype == "float32":
                scale = 100.0 if rng.random() < 0.1 and not plain else 1.0
                values = [float(np.float32(v)) for v in rng.normal(0, scale, count)]
            elif f.dtype == "int64":
                low, high = (0, 2) if plain else \
                    (-5, 10 ** 9 if rng.random() < 0.2 else 100)
                values = [int(v) for v in rng.integers(low, high, count)]
            else:
                values = [str(rng.choice(words)) if plain or rng.random() < 0.8
                          else f"w{int(rng.integers(0, 10 ** 6))}" for _ in range(count)]
            row[f.name] = values
        rows.append(row)
    return rows


def _read_sample(pattern: str, limit: int) -> np.ndarray:
    import tensorflow as tf
    if "://" in pattern:
        raise UserError(f"--sample {pattern}: only local files can be read as the sample")
    files = sorted(glob.glob(pattern))
    if not files:
        raise UserError(f"--sample {pattern} matches no files")
    records = []
    for path in files:
        with open(path, "rb") as fh:
            gzip = fh.read(2) == b"\x1f\x8b"
        try:
            for r in tf.data.TFRecordDataset(path, "GZIP" if gzip else ""):
                records.append(r.numpy())
                if len(records) >= limit:
                    return np.array(records, dtype=object)
        except tf.errors.OpError as e:
            raise UserError(f"--sample {path} is not a readable TFRecord file: "
                            f"{e.message.splitlines()[0]}") from None
    return np.array(records, dtype=object)


def compare_outputs(original: dict, optimized: dict, tol: Tolerance) -> list[OutputDiff]:
    """Per output: the largest absolute and relative float differences and the fraction of
    records that differ, judged against `tol`. A missing output or a changed dtype or shape is
    outside any tolerance."""
    diffs = []
    for name in sorted(original):
        a = original[name]
        if name not in optimized:
            diffs.append(OutputDiff(name, str(a.dtype), None, None, 1.0, False))
            continue
        b = optimized[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            diffs.append(OutputDiff(name, f"{a.dtype}->{b.dtype}", None, None, 1.0, False))
            continue
        n = max(a.shape[0], 1)
        if a.dtype.kind == "f":
            x, y = a.astype(np.float64), b.astype(np.float64)
            err = np.abs(x - y)
            both_nan = np.isnan(x) & np.isnan(y)
            err[both_nan] = 0.0
            max_abs = float(np.max(err)) if err.size else 0.0
            rel = err / np.maximum(np.abs(x), np.finfo(np.float32).tiny)
            max_rel = float(np.max(rel)) if rel.size else 0.0
            bad = ~(err <= tol.atol + tol.rtol * np.abs(x))
            changed = float(np.mean(bad.reshape(n, -1).any(axis=1))) if bad.size else 0.0
            diffs.append(OutputDiff(name, str(a.dtype), max_abs, max_rel, changed,
                                    changed == 0.0))
        else:
            bad = a != b
            changed = float(np.mean(bad.reshape(n, -1).any(axis=1))) if bad.size else 0.0
            diffs.append(OutputDiff(name, str(a.dtype), None, None, changed,
                                    changed <= tol.max_changed))
    return diffs


def verdict(diffs: list[OutputDiff], figures: Figures, tol: Tolerance) -> list[str]:
    """Why the optimized model must not be written (empty: it may)."""
    reasons = []
    for d in diffs:
        if not d.within:
            if d.max_abs is not None:
                reasons.append(f"output {d.name!r} differs by up to {d.max_abs:.3g} "
                               f"(relative {d.max_rel:.3g}), beyond rtol {tol.rtol:g} / atol "
                               f"{tol.atol:g}")
            else:
                reasons.append(f"output {d.name!r} ({d.dtype}) differs on "
                               f"{d.changed:.1%} of the records (allowed: "
                               f"{tol.max_changed:.1%})")
    before, after = figures.latency_ms
    if after > before * SLOWER_RATIO and after - before > NOISE_FLOOR_MS:
        reasons.append(f"it is slower: median {after:.2f} ms per batch of {figures.batch} "
                       f"against {before:.2f} ms for the original")
    return reasons


def _time_calls(models: list, batch: np.ndarray, calls: int) -> list[float]:
    """Median milliseconds per call of each model on the same batch: two warm-up calls each,
    then `calls` rounds that call them in turn (so that machine load hits both alike)."""
    for m in models:
        for _ in range(2):
            m.predict(batch)
    times = [[] for _ in models]
    for _ in range(calls):
        for i, m in enumerate(models):
            start = time.perf_counter()
            m.predict(batch)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in times]


def _score_original(model, records, batch: int, encode_rows):
    """(records, the original's outputs on them): the given sample, else generated records,
    varied first; if the model rejects those (an embedding id out of range, a value its
    own checks refuse), records closer to the spec's defaults: small ints and plain values."""
    from transforms.model import error_summary
    if records is not None:
        attempts = [records]
    else:
        dtypes = {f.name: f.dtype for f in model.spec.values()}
        attempts = [encode_rows(synthetic_rows(model.spec, batch, seed=0), dtypes),
                    encode_rows(synthetic_rows(model.spec, batch, seed=0, plain=True), dtypes)]
    for i, recs in enumerate(attempts):
        try:
            return recs, model.predict(recs)
        except Exception as e:  # noqa: BLE001 -- the next attempt, or one line below
            if i == len(attempts) - 1:
                where = "the --sample records" if records is not None else \
                    "records generated from its feature spec"
                raise ModelError(f"the original model (signature {model.signature!r}) fails on "
                                 f"{where}: {error_summary(e)}"
                                 + ("" if records is not None else "; pass --sample")) from None


def _time_loads(paths: list[str], signature: str, rounds: int = 3) -> list[float]:
    """Median seconds from `tf.saved_model.load` to the end of the first call (the warm-up)
    of each model over `rounds` loads in turn, all after TensorFlow has started in this
    process: the first load of a process also pays for TensorFlow's own start, which would
    favour whichever model is loaded second."""
    from transforms.model import open_model
    times = [[] for _ in paths]
    for _ in range(rounds):
        for i, path in enumerate(paths):
            start = time.perf_counter()
            open_model(path, signature)
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def _check_output(output: str) -> str:
    if "://" in output:
        raise OutputError(f"--output {output}: only a local directory can be written")
    output = os.path.abspath(output.rstrip("/") or "/")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise OutputError(f"--output {output} exists and is not an empty directory; choose a "
                          "new path (nothing was written)")
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise OutputError(f"--output {output}: its parent directory {parent} does not exist")
    return output


def _settled_models(original, optimized):
    """(name, original LoadedModel, optimized LoadedModel) for every signature both carry
    whose spec can be settled, the chosen one first."""
    from transforms.model import LoadedModel, settle_spec
    from transforms.introspect import signature_info
    pairs = [(original.signature, original, optimized)]
    for name in sorted(set(original.loaded.signatures) & set(optimized.loaded.signatures)):
        if name == original.signature:
            continue
        models = []
        for m in (original, optimized):
            info = signature_info(name, m.loaded.signatures[name])
            try:
                spec, source = settle_spec(info, None)
            except (ModelError, FeatureSpecError):
                break
            models.append(LoadedModel(m.version, m.local_dir, m.loaded, name, info, spec,
                                      source, m.load_seconds, m.stage_seconds))
        if len(models) == 2:
            pairs.append((name, *models))
    return pairs


@contextlib.contextmanager
def _stage(name: str):
    """A TensorFlow failure while rewriting the graph is the model's limit, not a crash: one
    line naming the stage (our own errors pass through)."""
    from transforms.model import error_summary
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- reported in one sentence
        raise ModelError(f"{name} failed: {error_summary(e)} (nothing was written)") from None


def optimize(model: str, output: str, signature: str = "serving_default",
             sample: str | None = None, quantize: str = "none", force: bool = False,
             batch: int = 1024, calls: int = 9, cache_dir: str | None = None,
             rtol: float | None = None, atol: float | None = None, say=print) -> dict:
    """Optimize `model` into `output`; returns the record written into it. Raises UserError
    (nothing written) on a user mistake or a refused model."""
    from transforms.model import model_size_bytes, open_model
    from transforms.examples import encode_rows
    if quantize not in QUANTIZE_MODES:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got "
                        f"{quantize!r}")
    output = _check_output(output)
    tol = TOLERANCES[quantize]
    if rtol is not None or atol is not None:
        tol = dataclasses.replace(tol, rtol=tol.rtol if rtol is None else rtol,
                                  atol=tol.atol if atol is None else atol)

    original = open_model(model, signature, cache_dir=cache_dir)
    if not os.path.isdir(original.local_dir):
        raise ModelError(f"--model {model} is not a SavedModel directory (a frozen graph file "
                         "is already frozen); optimize rewrites SavedModels")
    orig_size = model_size_bytes(original.local_dir)
    say(f"load: {original.version.path} signature {signature!r} "
        f"({original.info.convention}), {original.load_seconds:.2f} s, "
        f"{orig_size / 1e6:.2f} MB")

    start = time.monotonic()
    with _stage("freeze"):
        frozen = freeze_model(original.local_dir, original.loaded, signature)
    skipped = "".join(f"; skipped {k}: {v}" for k, v in sorted(frozen.skipped.items()))
    say(f"freeze: {frozen.source_format} model, signatures "
        f"{', '.join(sorted(frozen.signatures))}, {len(frozen.graph_def.node)} nodes "
        f"({time.monotonic() - start:.2f} s){skipped}")

    start = time.monotonic()
    with _stage("optimize"):
        graph_def = fold_batch_norms(optimize_graph(frozen))
        graph_def, quantized = quantize_weights(graph_def, quantize, set(
            n.split(":")[0] for n in frozen.fetch_names()))
    say(f"optimize: {len(frozen.graph_def.node)} -> {len(graph_def.node)} nodes, Grappler "
        f"{', '.join(GRAPPLER_PASSES)}, batch-norm folding"
        + (f", {quantized} weight tensors stored as {quantize}" if quantize != "none" else "")
        + f" ({time.monotonic() - start:.2f} s)")

    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.optimize-",
                            dir=os.path.dirname(output))
    try:
        staged = os.path.join(work, "model")
        with _stage("write"):
            as_variables = write_saved_model(graph_def, frozen, staged)
        diffs_by_sig, figures, record = _check(original, staged, signature, sample, tol,
                                               batch, calls, orig_size, force, encode_rows,
                                               say)
        record.update({
            "tool": "batch-predict optimize",
            "source": {"model": model, "path": original.version.path,
                       "version": original.version.version, "format": frozen.source_format},
            "signature": signature, "signatures": sorted(frozen.signatures),
            "skipped_signatures": frozen.skipped,
            "passes": ["freeze", *(f"grappler:{p}" for p in GRAPPLER_PASSES),
                       "fold_batch_norms"] + ([f"quantize:{quantize}"]
                                              if quantize != "none" else []),
            "quantize": quantize, "quantized_tensors": quantized,
            "weights_as_variables": as_variables,
        })
        write_record(staged, record)
        os.rename(staged, output)  # atomic; replaces an empty directory
        say(f"write: {output} ({model_size_bytes(output) / 1e6:.2f} MB, record in "
            f"{RECORD_FILE})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print_table(diffs_by_sig, figures, say)
    return record


def _check(original, staged, signature, sample, tol, batch, calls, orig_size, force,
           encode_rows, say) -> tuple[dict, Figures, dict]:
    """Load the staged model back, compare specs and outputs, time both; raises ModelError
    when refused (and not forced). Returns (diffs per signature, figures, record part)."""
    from transforms.model import model_size_bytes, open_model
    from transforms.introspect import recover_spec
    optimized = open_model(staged, signature)
    for name in original.loaded.signatures:
        if name not in optimized.loaded.signatures:
            continue
        try:
            before = recover_spec(original.loaded.signatures[name])
            after = recover_spec(optimized.loaded.signatures[name])
        except FeatureSpecError:
            continue
        if before != after:
            raise ModelError(f"the optimized signature {name!r} parses another feature spec "
                             "than the original (nothing was written)")
    sample_records = None
    if sample:
        sample_records = _read_sample(sample, batch)
        if not len(sample_records):
            raise UserError(f"--sample {sample} holds no records")
    diffs_by_sig, records = {}, None
    for name, a, b in _settled_models(original, optimized):
        chosen = name == signature
        try:
            got, out_a = _score_original(a, sample_records if chosen else None, batch,
                                         encode_rows)
        except ModelError:
            if chosen:
                raise
            continue  # another signature that no generated record satisfies: not compared
        if chosen:
            records = got
        try:
            out_b = b.predict(got)
        except Exception as e:  # noqa: BLE001 -- the optimized model broke what worked
            from transforms.model import error_summary
            raise ModelError(f"not written: the optimized signature {name!r} fails on records "
                             f"the original scores: {error_summary(e)}") from None
        diffs_by_sig[name] = compare_outputs(out_a, out_b, tol)
    latency = _time_calls([original, optimized], records, calls)
    if latency[1] > latency[0] * SLOWER_RATIO and latency[1] - latency[0] > NOISE_FLOOR_MS:
        # a "slower" verdict gets a second, longer measurement: another process's burst of
        # work during the first one is the commoner cause on a shared machine
        calls *= 3
        latency = _time_calls([original, optimized], records, calls)
    figures = Figures(len(records), calls, tuple(latency),
                      tuple(_time_loads([original.local_dir, staged], signature)),
                      (orig_size, model_size_bytes(staged)))
    diffs = [d for ds in diffs_by_sig.values() for d in ds]
    reasons = verdict(diffs_by_sig[signature], figures, tol) + [
        r for name, ds in diffs_by_sig.items() if name != signature
        for r in (f"signature {name!r}: {x}" for x in verdict(ds, figures, tol)
                  if not x.startswith("it is slower"))]
    worst = max((d.max_rel or 0.0 for d in diffs), default=0.0)
    others = "exact" if not tol.max_changed else \
        f"<= {tol.max_changed:.0%} of records changed"
    say(f"check: {len(records)} {'sample' if sample else 'synthetic'} records, "
        f"{len(diffs_by_sig)} signature(s), {len(diffs)} outputs, largest relative "
        f"difference {worst:.3g} (rtol {tol.rtol:g}, atol {tol.atol:g}, non-float outputs "
        f"{others}); latency {latency[0]:.2f} -> {latency[1]:.2f} ms"
        + (f"; REFUSED: {'; '.join(reasons)}" if reasons and not force else "")
        + (f"; forced past: {'; '.join(reasons)}" if reasons and force else ""))
    if reasons and not force:
        raise ModelError(f"not written: {reasons[0]}" + (
            f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
            + "; --force writes it anyway")
    record = {"tolerance": tol.to_json(), "figures": figures.to_json(),
              "sample": sample or "synthetic",
              "outputs": {name: [d.to_json() for d in ds]
                          for name, ds in diffs_by_sig.items()},
              "forced": reasons if force else []}
    return diffs_by_sig, figures, record


def _print_table(diffs_by_sig, figures: Figures, say) -> None:
    (lat_a, lat_b), (load_a, load_b), (size_a, size_b) = (
        figures.latency_ms, figures.load_s, figures.size_bytes)
    lines = ["", "| figure | original | optimized | ratio |", "|---|---|---|---|",
             f"| model call, batch {figures.batch} (median of {figures.calls}) | "
             f"{lat_a:.2f} ms | {lat_b:.2f} ms | {lat_b / lat_a:.2f} |",
             f"| load + first call | {load_a:.2f} s | {load_b:.2f} s | "
             f"{load_b / max(load_a, 1e-9):.2f} |",
             f"| size on disk | {size_a / 1e6:.2f} MB | {size_b / 1e6:.2f} MB | "
             f"{size_b / max(size_a, 1):.2f} |",
             "", "| signature | output | dtype | max abs diff | max rel diff | records changed |",
             "|---|---|---|---|---|---|"]
    for name, ds in diffs_by_sig.items():
        for d in ds:
            fmt = (lambda v: "-" if v is None else f"{v:.3g}")
            lines.append(f"| {name} | {d.name} | {d.dtype} | {fmt(d.max_abs)} | "
                         f"{fmt(d.max_rel)} | {d.changed:.1%} |")
    say("\n".join(lines))


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one `error:` line and exit 2, like every other refusal."""

    def error(self, message):
        raise OptionsError(message)


def main(argv: list[str]) -> int:
    parser = _OneLineParser(prog="python -m pipeline optimize",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SavedModel dir or export base dir")
    parser.add_argument("--output", required=True,
                        help="new (or empty) local dir for the optimized SavedModel")
    parser.add_argument("--signature", default="serving_default",
                        help="signature checked and timed (all are carried over)")
    parser.add_argument("--sample", default=None,
                        help="glob of TFRecord files of tf.Examples to check with (default: "
                             "records generated from the feature spec)")
    parser.add_argument("--quantize", default="none",
                        help=f"store large float32 weights as: {', '.join(QUANTIZE_MODES)}")
    parser.add_argument("--force", action="store_true",
                        help="write even when outside the tolerance or slower")
    parser.add_argument("--batch_size", type=int, default=1024,
                        help="records in the check and timing batch")
    parser.add_argument("--calls", type=int, default=9,
                        help="timed calls per model (the median is reported)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="relative tolerance of float outputs (default: 1e-5, float16 "
                             "1e-2, bfloat16 5e-2)")
    parser.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance of float outputs (default: 1e-6, float16 "
                             "1e-2, bfloat16 5e-2)")
    parser.add_argument("--model_cache_dir", default=None)
    try:
        args = parser.parse_args(argv)
        if args.batch_size < 1 or args.calls < 1:
            parser.error("--batch_size and --calls must be at least 1")
        if any(t is not None and not t >= 0 for t in (args.rtol, args.atol)):
            parser.error("--rtol and --atol must be non-negative numbers")
        optimize(args.model, args.output, args.signature, args.sample, args.quantize,
                 args.force, args.batch_size, args.calls, args.model_cache_dir,
                 args.rtol, args.atol)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
