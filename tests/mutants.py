"""`python -m tests.mutants [NAME ...] [--list]` (`make mutants`): plant known bugs in a copy of
the code, one at a time, run the tests that should catch each, and print which survived.

Each mutant is a realistic slip (a count taken from the wrong place, a check dropped, an order
swapped), written as one exact text replacement in one file; the tests named with it must fail
on it. A mutant whose text is no longer in the code is reported as stale (the code moved: update
the mutant), and one that makes the tests error out instead of fail is reported as broken.
Exit status 0 only when every mutant was killed. Not part of `make test`: it runs the named
tests once per mutant (several minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str          # file relative to the repository root
    old: str           # exact text, found exactly once
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("records_in summed from the outputs instead of counted by the reader",
           "transforms/write.py",
           'records_in = total["records"]\n    errors = total["errors"]',
           'errors = total["errors"]\n    records_in = total["predicted"] + errors',
           ("tests/test_contract.py::test_a_record_lost_inside_the_job_is_reported_and_never_"
            "marked_done",)),
    Mutant("a run that lost records still gets _SUCCESS",
           "transforms/write.py",
           'within = summary["within_error_budget"] and summary["accounted"]',
           'within = summary["within_error_budget"]',
           ("tests/test_contract.py::test_a_record_lost_inside_the_job_is_reported_and_never_"
            "marked_done",)),
    Mutant("the model loaded per DoFn instance, not once per process",
           "transforms/predict.py",
           "self._holder = self._shared.acquire(self._load, tag=self._handler.shared_tag())",
           "self._holder = self._load()",
           ("tests/test_predict_dofn.py::test_the_model_is_loaded_once_per_process_and_its_"
            "load_reported_once",
            "tests/test_contract.py::test_the_model_is_loaded_once_per_worker_process")),
    Mutant("the first of two different parse ops silently wins",
           "transforms/introspect.py",
           "    if len(specs) > 1:\n", "    if len(specs) > 1 and False:\n",
           ("tests/test_contract.py::test_a_signature_that_parses_examples_two_ways_is_refused",)),
    Mutant("_SUCCESS written before the staged files are renamed",
           "transforms/output_dir.py",
           "    _place(output, renames, ops)\n    manifest = manifest_for(output, sorted(targets))",
           "    if within_budget:\n        ops.write(_join(output, SUCCESS), b'')\n"
           "    _place(output, renames, ops)\n    manifest = manifest_for(output, sorted(targets))",
           ("tests/test_output_dir.py::test_finalize_failing_at_every_step_never_lies_and_a_"
            "retry_finishes",)),
    Mutant("--overwrite deletes every file in the output dir",
           "transforms/output_dir.py",
           "return _own_file(suffixes).fullmatch(relative) is not None", "return True",
           ("tests/test_output_dir.py::test_overwrite_removes_only_this_tools_outputs",)),
    Mutant("a retried finalize fails on files it already moved",
           "transforms/output_dir.py",
           "        elif not ops.exists(target):\n", "        else:\n",
           ("tests/test_output_dir.py::test_finalize_failing_at_every_step_never_lies_and_a_"
            "retry_finishes",)),
    Mutant("a run over its budget replaces the last good output",
           "transforms/output_dir.py",
           "if not within_budget and SUCCESS in found.files:",
           "if not within_budget and SUCCESS in found.files and False:",
           ("tests/test_output_dir.py::test_an_over_budget_overwrite_keeps_the_last_good_output",)),
    Mutant("symlinks at our names are not refused at start-up",
           "transforms/output_dir.py",
           "    found = scan(output)\n    if found.odd:\n        raise OutputError(f\"{output}/"
           "{found.odd[0]} is a symlink",
           "    found = scan(output)\n    if found.odd and False:\n        raise OutputError("
           "f\"{output}/{found.odd[0]} is a symlink",
           ("tests/test_output_dir.py::test_symlinks_at_our_names_are_refused",)),
    Mutant("the output dir is not locked",
           "transforms/output_lock.py",
           "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n", "        pass\n",
           ("tests/test_output_dir.py::test_a_second_run_on_a_busy_output_dir_is_refused",)),
    Mutant("stale staging dirs are never removed",
           "transforms/output_dir.py",
           "            if stale != staging_name(run_id):",
           "            if stale != staging_name(run_id) and False:",
           ("tests/test_output_dir.py::test_stale_staging_dirs_are_removed_by_the_next_"
            "successful_run",)),
    Mutant("an input inside the output dir is accepted",
           "transforms/output_dir.py",
           "    inside = [p for p in inputs if _inside(p, output)]",
           "    inside = []",
           ("tests/test_output_dir.py::test_an_output_dir_that_holds_an_input_is_refused",)),
    Mutant("an int64 key read as float32",
           "transforms/formats/tfrecord_input.py",
           '"int64_list": "int64"', '"int64_list": "float32"',
           ("tests/test_readme_promises.py::test_key_dtype_auto_reads_the_first_record",)),
    Mutant("error payloads cut one byte short",
           "transforms/records.py",
           "payload = payload[:MAX_PAYLOAD_BYTES]", "payload = payload[:MAX_PAYLOAD_BYTES - 1]",
           ("tests/test_bad_inputs.py",)),
    Mutant("the pyarrow path trims spaces around string cells",
           "transforms/parse.py",
           "            values = text.cast(pa.binary()).to_numpy(zero_copy_only=False)",
           "            values = pc.utf8_trim_whitespace(text).cast(pa.binary())"
           ".to_numpy(zero_copy_only=False)",
           ("tests/test_csv_reference.py",)),
    Mutant("CSV line numbers of a later block start one line late",
           "transforms/formats/csv_reader.py",
           "        line += lines\n    if broken is not None:",
           "        line += lines + 1\n    if broken is not None:",
           ("tests/test_csv_reader.py", "tests/test_bad_inputs.py")),
    Mutant("TFRecord data checksums are not checked",
           "transforms/formats/tfrecord_input.py",
           "            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != \\\n"
           "                    unpack_crc(buf, end)[0]:",
           "            if False:",
           ("tests/test_bad_inputs.py",)),
    Mutant("the same file under two spellings is read twice",
           "transforms/read.py",
           "first = files.setdefault(_same_file_key(m.path), (m.path, m.size_in_bytes))",
           "first = files.setdefault(m.path, (m.path, m.size_in_bytes))",
           ("tests/test_hostile_inputs.py",)),
    Mutant("NaN written as JSON null",
           "transforms/formats/json_columns.py",
           """    return b'"NaN"' if value != value else""",
           """    return b'null' if value != value else""",
           ("tests/test_hostile_inputs.py",)),
    Mutant("the shortest matching extension names the format (.csv.gz read as TFRecord)",
           "transforms/formats/__init__.py",
           "return max(found, key=lambda f: f[0])[1] if found else None",
           "return min(found, key=lambda f: f[0])[1] if found else None",
           ("tests/test_formats.py",)),
    Mutant("typed float32 values beyond its range accepted",
           "transforms/examples.py",
           "for j in np.flatnonzero(np.isfinite(wide) & ~np.isfinite(narrow)):",
           "for j in np.flatnonzero(np.isfinite(wide) & ~np.isfinite(narrow) & False):",
           ("tests/test_formats.py",)),
    Mutant("CSV headers matched without regard to letter case",
           "transforms/parse.py",
           "        if name not in counts and name.casefold() in folded:",
           "        if name not in counts and name.casefold() in folded and False:",
           ("tests/test_hostile_inputs.py",)),
    Mutant("model-error rows point at the next record",
           "transforms/predict.py",
           "errors_row = error_row(chunk.shards[pos], chunk.indices[pos], etype, message,",
           "errors_row = error_row(chunk.shards[pos], chunk.indices[pos] + 1, etype, message,",
           ("tests/test_predict_dofn.py::test_bisection_scores_every_good_record_and_rejects_"
            "exactly_the_bad_ones",
            "tests/test_faults.py::test_model_error_on_some_records_spares_the_rest")),
    Mutant("a split chunk loses the record at the split point",
           "transforms/predict.py",
           "            self._score_range(chunk, positions[half:], results, errors)",
           "            self._score_range(chunk, positions[half + 1:], results, errors)",
           ("tests/test_predict_dofn.py::test_bisection_scores_every_good_record_and_rejects_"
            "exactly_the_bad_ones",)),
    Mutant("a model failure of any kind is written as error rows instead of failing the job",
           "transforms/predict.py",
           "            if failure.kind == FATAL:\n",
           "            if failure.kind == FATAL and False:\n",
           ("tests/test_predict_dofn.py::test_a_fatal_model_failure_fails_the_job_instead_of_"
            "rejecting_records",)),
    Mutant("the smaller chunk size after out-of-memory is not kept",
           "transforms/predict.py",
           "            self._chunk_limit = max(1, limit)\n",
           "            pass\n",
           ("tests/test_predict_dofn.py::test_out_of_memory_backs_off_to_smaller_chunks_for_"
            "good",)),
    Mutant("concurrent calls finished newest first",
           "transforms/predict.py",
           "        while len(self._inflight) > self._concurrent:\n"
           "            yield from self._finish(*self._inflight.popleft())",
           "        while len(self._inflight) > self._concurrent:\n"
           "            yield from self._finish(*self._inflight.pop())",
           ("tests/test_predict_dofn.py::test_concurrent_calls_overlap_and_come_out_in_record_"
            "order",)),
    Mutant("a shard's latency row counts the whole call as its own",
           "transforms/predict.py",
           'yield beam.pvalue.TaggedOutput("latency", (shard, (micros, count, n)))',
           'yield beam.pvalue.TaggedOutput("latency", (shard, (micros, n, n)))',
           ("tests/test_predict_dofn.py::test_latency_rows_are_exact_with_a_fake_clock",)),
    Mutant("the model-call time includes reading the keys",
           "transforms/predict.py",
           "        elapsed_ns = self._clock() - start\n"
           "        keys = None if self._keys is None else self._keys.read(serialized)\n",
           "        keys = None if self._keys is None else self._keys.read(serialized)\n"
           "        elapsed_ns = self._clock() - start\n",
           ("tests/test_predict_dofn.py::test_latency_rows_are_exact_with_a_fake_clock",)),
    Mutant("--batch_size auto keeps the last size it tried, not the best",
           "transforms/batch_size.py",
           "            self.size = self.best[0]\n",
           "            pass\n",
           ("tests/test_predict_dofn.py::test_auto_batch_size_doubles_while_it_pays_then_"
            "settles_on_the_best",)),
    Mutant("a TFRecord range's resync is trusted without checking it is on the chain of frames",
           "transforms/formats/tfrecord_input.py",
           "                if summary.first == chain:",
           "                if summary.first is not None:",
           ("tests/test_split_tfrecord.py",)),
    Mutant("every CSV range is taken to start outside quotes",
           "transforms/formats/csv_input.py",
           "        sides.append(summary.sides[state])",
           "        sides.append(summary.sides[0])",
           ("tests/test_split_csv.py",)),
    Mutant("a forwarded key output is dropped without checking it equals the key",
           "transforms/predict.py",
           "            ~_same_as_keys(forwarded, keys))",
           "            np.zeros(len(keys), dtype=bool))",
           ("tests/test_key_output.py",)),
    Mutant("a read goes on past its restriction after the runner split it",
           "transforms/read.py",
           "        while claim(block):",
           "        while claim(block) or block < index.blocks:",
           ("tests/test_scale_out.py::test_dynamic_splits_read_every_record_exactly_once",)),
    Mutant("records without a key are scored with another record's key",
           "transforms/predict.py",
           "                positions, values = positions[has_key], values[has_key]",
           "                positions, values = positions[has_key], values[:int(has_key.sum())]",
           ("tests/test_predict_dofn.py::test_records_without_a_key_are_rejected_and_the_rest_"
            "keep_their_own_keys",)),
    Mutant("passthrough values not realigned after records leave the model step",
           "transforms/predict.py",
           "{k: v[positions] for k, v in chunk.passthrough.items()})",
           "{k: v[:len(positions)] for k, v in chunk.passthrough.items()})",
           ("tests/test_passthrough.py::test_fields_stay_with_their_records_when_records_fail",)),
    Mutant("a spec feature passed through as the source wrote it, not as the model got it",
           "transforms/passthrough.py",
           "        if name in spec:\n            plan.append(",
           "        if name in spec and False:\n            plan.append(",
           ("tests/test_passthrough.py::test_every_input_format_copies_the_fields_with_their_"
            "parsed_values",)),
    Mutant("a table output over its error budget is still copied into place",
           "transforms/bigquery/sink.py",
           "copy_job = self._copy(bq, run_id, overwrite) if within_budget else None",
           "copy_job = self._copy(bq, run_id, overwrite)",
           ("tests/test_bigquery.py::test_a_run_over_its_error_budget_leaves_the_table_as_it_"
            "was",)),
    Mutant("a retried table finalize does not look for its own finished copy job",
           "transforms/bigquery/sink.py",
           "        done, attempt = self._copied(bq, run_id)\n",
           "        done, attempt = None, 0\n",
           ("tests/test_bigquery.py::test_finalize_is_safe_to_run_again",)),
    Mutant("a SavedModel whose objects cannot be revived is refused, not loaded by its "
           "signatures", "transforms/model.py",
           "        loaded = load_signatures_only(local)\n",
           "        raise RuntimeError(revival)\n",
           ("tests/test_graph_models.py::test_unrevivable_savedmodel_scores_through_its_"
            "signatures",)),
    Mutant("a typed key that the key column cannot hold reaches the writer",
           "transforms/parse.py",
           "    if dtype is not None and number == (dtype == \"string\"):",
           "    if False:",
           ("tests/test_jsonl_input.py::test_a_key_of_another_type_than_the_first_is_an_error_"
            "row_in_a_typed_output",)),
    Mutant("progress counts the bytes a block read, not the bytes it spans",
           "transforms/read.py",
           "    _add_read(seen, span, part)\n",
           "    _add_read(seen, part[\"bytes\"], part)\n",
           ("tests/test_progress.py::test_bytes_read_add_up_to_the_input_size",)),
    Mutant("the read-ahead thread's position shown before its items are handed on",
           "transforms/formats/base.py",
           "            stats[\"position\"] = lambda: self._handed",
           "            pass",
           ("tests/test_progress.py::test_what_is_read_ahead_is_not_counted_until_handed_on",)),
    Mutant("the launcher reads its own counters while worker processes count",
           "pipeline/run.py",
           "ProgressReporter(counters=PublishedProgress(published), **sizes) as reporter:",
           "ProgressReporter(**sizes) as reporter:",
           ("tests/test_progress.py::test_worker_processes_publish_their_counts",)),
    Mutant("the ETA counts bytes read ahead of the model as done",
           "transforms/progress.py",
           "        return self.records_scored + self.records_failed",
           "        return self.records_read",
           ("tests/test_progress.py::test_percent_rate_and_eta_from_counters",
            "tests/test_progress.py::test_records_left_of_gzip_and_plain_files_apart")),
    Mutant("gzip bytes taken as dense as plain ones before a gzip file is read",
           "pipeline/progress.py",
           "        ratio = self.gzip_ratio or 1.0\n",
           "        ratio = 1.0\n",
           ("tests/test_progress.py::test_records_left_of_gzip_and_plain_files_apart",)),
]


def _copy_tree(dest: str) -> None:
    """The work tree as it is (tracked and new files, not ignored ones) into dest."""
    listed = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def run_mutant(mutant: Mutant, work: str) -> tuple[str, float, str]:
    """('killed' | 'SURVIVED' | 'stale' | 'broken', seconds, detail) for one mutant."""
    path = os.path.join(work, mutant.path)
    original = open(path, encoding="utf-8").read()
    if original.count(mutant.old) != 1:
        return "stale", 0.0, f"text found {original.count(mutant.old)} times in {mutant.path}"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(original.replace(mutant.old, mutant.new))
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                               "no:cacheprovider", *mutant.tests], cwd=work,
                              capture_output=True, text=True, env=dict(os.environ, CI="true"))
    finally:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(original)
    seconds = time.monotonic() - start
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode == 1:
        return "killed", seconds, tail
    if done.returncode == 0:
        return "SURVIVED", seconds, tail
    return "broken", seconds, f"pytest exit {done.returncode}: {tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only mutants whose name contains one "
                                                 "of these words")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path}; {', '.join(m.tests)})")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as work:
        _copy_tree(work)
        for i, mutant in enumerate(chosen, 1):
            verdict, seconds, detail = run_mutant(mutant, work)
            results.append(verdict)
            print(f"[{i:2d}/{len(chosen)}] {verdict:<8} {seconds:6.1f}s  {mutant.name}"
                  f"{'' if verdict == 'killed' else '  -- ' + detail}", flush=True)
    killed = results.count("killed")
    print(f"{killed} of {len(results)} mutants killed"
          + "".join(f", {results.count(v)} {v.lower()}" for v in ("SURVIVED", "stale", "broken")
                    if v in results))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
