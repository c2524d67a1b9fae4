"""The output location: which names in it belong to this tool, what is refused before a run
starts, and how the last step puts a run's staged files in place without touching anything
else (claiming the dir for one run is `transforms.output_lock`).

A run only ever creates, replaces or deletes these names under --output (`own_name`):

    predictions-NNNNN-of-NNNNN.{jsonl,csv}   errors-NNNNN-of-NNNNN.jsonl
    metrics/{shard_latency,model_loads}-NNNNN-of-NNNNN.jsonl
    metrics/summary.json   metrics/errors_by_type.json   metrics/run_profile.json
    report.html   manifest.json   _SUCCESS
    .tmp-<run id>/         its staging dir (and stale ones of killed runs, once one succeeds)
    .batch-predict.lock    the claim that keeps two runs off one output dir

Everything else in the dir (an input file, notes, sub-directories) is never touched. A
symlink, or anything but a regular file, at one of these names is refused: a write through it
would land outside --output. On the local filesystem every placement is a rename of a file
written inside the run's own staging dir, which never follows a symlink at the target.

`commit` is the finalize step, made safe to run twice and to resume after a failure at any
point, like Beam's `FileBasedSink.finalize_write`: a staged file already moved is skipped, the
previous run's `_SUCCESS` goes first and the new one comes last, so a consumer never sees
`_SUCCESS` beside a missing or partial file, nor a `manifest.json` before every file it lists.
A run over its error budget never replaces a previous successful run's outputs: its own files
are finalized inside its staging dir instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import OutputError
from transforms.output_lock import (LOCK, is_remote, literal, release_remote_lock,
                                    staging_name)
from transforms.formats import OUTPUT_FORMATS

__all__ = ["SUCCESS", "MANIFEST", "RUN_ID", "Scan", "FileOps", "normalize_output", "own_name",
           "scan", "check_output_bucket", "check_output", "commit", "read_own_manifest",
           "run_outputs_dir"]

_LOG = logging.getLogger(__name__)
SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
_SHARDED = r"-\d{5,}-of-\d{5,}"
_STAGING = re.compile(r"\.tmp-" + RUN_ID.pattern)


@functools.lru_cache(maxsize=8)
def _own_file(suffixes: tuple[str, ...]) -> re.Pattern:
    predictions = "|".join(re.escape(s) for s in suffixes)
    return re.compile(
        rf"predictions{_SHARDED}(?:{predictions})|errors{_SHARDED}\.jsonl"
        rf"|metrics/(?:shard_latency|model_loads){_SHARDED}\.jsonl"
        r"|metrics/summary\.json|metrics/errors_by_type\.json|metrics/run_profile\.json"
        r"|report\.html|manifest\.json|_SUCCESS")


def own_name(relative: str) -> bool:
    """Whether a path relative to the output dir is one that a run writes: the prediction
    files of every registered output format (read at call time, so a format registered after
    import counts too), error rows, metrics, manifest and _SUCCESS."""
    suffixes = tuple(sorted(f.suffix for f in OUTPUT_FORMATS.values()))
    return _own_file(suffixes).fullmatch(relative) is not None


def normalize_output(output: str) -> str:
    """The output dir as the run will use it: local paths absolute (workers may run elsewhere),
    no trailing slash. Refuses what cannot be a directory this run owns."""
    text = (output or "").strip()
    if not text:
        raise OutputError("--output: is empty; pass the directory to write predictions into")
    if is_remote(text):
        scheme, _, rest = text.partition("://")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise OutputError(f"--output: {output!r} names no bucket; pass e.g. "
                              f"{scheme}://BUCKET/scores/DATE")
        return text.rstrip("/")
    path = os.path.abspath(text)
    if os.path.dirname(path) == path:
        raise OutputError(f"--output: {output!r} is the filesystem root; pass a directory of "
                          "its own, e.g. ./scores")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"--output: {output!r} exists and is not a directory; pass a "
                          "directory (it is created if missing)")
    return path


@dataclasses.dataclass
class Scan:
    """What of this tool's is in an output dir."""
    files: list[str]       # own files (relative paths), regular files only
    staging: list[str]     # .tmp-<run id> dirs
    odd: list[str]         # own names that are symlinks or not regular files

    def previous_outputs(self) -> list[str]:
        return sorted(self.files)


def _scan_local(output: str) -> Scan:
    found = Scan([], [], [])

    def classify(entry, relative):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            found.odd.append(relative)
        else:
            found.files.append(relative)
    try:
        entries = list(os.scandir(output))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        name = entry.name
        if name == "metrics":
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                found.odd.append(name)
                continue
            for sub in os.scandir(entry.path):
                if own_name("metrics/" + sub.name):
                    classify(sub, "metrics/" + sub.name)
        elif own_name(name):
            classify(entry, name)
        elif _STAGING.fullmatch(name) or name == LOCK:
            if entry.is_symlink():
                found.odd.append(name)
            elif _STAGING.fullmatch(name):
                found.staging.append(name)
    for part in (found.files, found.staging, found.odd):
        part.sort()
    return found


def _scan_remote(output: str) -> Scan:
    found = Scan([], [], [])
    root = output + "/"
    try:
        matched = FileSystems.match([literal(root) + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 -- nothing listed: nothing of ours there
        return found
    staging = set()
    for m in matched:
        rel = m.path[len(root):] if m.path.startswith(root) else None
        if not rel:
            continue
        head = rel.split("/", 1)[0]
        if own_name(rel):
            found.files.append(rel)
        elif _STAGING.fullmatch(head):
            staging.add(head)
    found.files.sort()
    found.staging = sorted(staging)
    return found


def scan(output: str) -> Scan:
    return _scan_remote(output) if is_remote(output) else _scan_local(output)


def _inside(path: str, root: str) -> bool:
    if is_remote(root):
        return path.startswith(root + "/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def check_output_bucket(output: str) -> None:
    """A gs:// output needs an existing bucket: otherwise every worker's first write fails."""
    if not output.startswith("gs://"):
        return
    from apache_beam.io.gcp import gcsio
    bucket = output[len("gs://"):].split("/", 1)[0]
    try:
        found = gcsio.GcsIO().get_bucket(bucket)
    except Exception as e:  # noqa: BLE001 -- e.g. Forbidden: may still write objects
        _LOG.info("cannot look up bucket %s (%s); assuming it exists", bucket, type(e).__name__)
        return
    if found is None:
        raise OutputError(f"output bucket gs://{bucket} does not exist; create it (gcloud "
                          f"storage buckets create gs://{bucket}) or choose another --output")


def check_output(output: str, overwrite: bool, inputs: list[str] = ()) -> Scan:
    """Refuse an output dir this run must not write into (nothing is changed here)."""
    check_output_bucket(output)
    found = scan(output)
    if found.odd:
        raise OutputError(f"{output}/{found.odd[0]} is a symlink or not a regular file, at a "
                          "name this tool writes; refusing to write through it (remove it, or "
                          "choose another --output)")
    inside = [p for p in inputs if _inside(p, output)]
    if inside:
        raise OutputError(f"input {inside[0]} is inside the output dir {output}; choose an "
                          "--output that holds no inputs")
    if MANIFEST in found.files and not overwrite:
        raise OutputError(f"output dir {output} holds a previous run's outputs (e.g. "
                          f"{output}/{MANIFEST}); pass --overwrite to replace them once this "
                          "run succeeds, or choose another --output")
    return found


# --- finalize ------------------------------------------------------------------------------------
class FileOps:
    """The filesystem operations finalize uses (tests inject failures through a subclass).

    Local paths go through `os` so that nothing follows a symlink: a rename replaces whatever
    is at the target name, and a target parent that is a symlink is refused."""

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path) if is_remote(path) else os.path.lexists(path)

    def read(self, path: str) -> bytes:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            return fh.read()

    def write(self, path: str, data: bytes) -> None:
        """Write a new file (only ever inside the run's staging dir)."""
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            fh.write(data)

    def rename(self, source: str, target: str) -> None:
        if is_remote(source):
            FileSystems.rename([source], [target])
            return
        parent = os.path.dirname(target)
        if os.path.islink(parent):
            raise OutputError(f"{parent} became a symlink while the run was writing; "
                              "refusing to write through it")
        if not os.path.isdir(parent):
            os.mkdir(parent)
        os.rename(source, target)

    def delete(self, path: str) -> None:
        if is_remote(path):
            FileSystems.delete([literal(path)])
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove_tree(self, path: str) -> None:
        """Delete a staging dir and what is left in it."""
        if is_remote(path):
            FileSystems.delete([path.rstrip("/") + "/"])
            return
        import shutil
        if os.path.islink(path):
            return
        shutil.rmtree(path, ignore_errors=True)


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1]


def read_own_manifest(directory: str, ops: FileOps | None = None) -> dict | None:
    ops = ops or FileOps()
    path = _join(directory, MANIFEST)
    try:
        return json.loads(ops.read(path)) if ops.exists(path) else None
    except (ValueError, OSError):
        return None  # a partial manifest is nobody's


def _placement_order(relative: str) -> tuple:
    """Data files first, metrics next, the summary last: a reader that finds the summary
    finds every file it counts."""
    return (relative == "metrics/summary.json", relative.startswith("metrics/"), relative)


def commit(output: str, staging: str, run_id: str, renames: dict[str, str],
           within_budget: bool, overwrite: bool, manifest_for, ops: FileOps | None = None
           ) -> str:
    """Put the staged files in place; returns the dir that holds this run's outputs.

    `renames` maps staged paths (inside `staging`) to final relative names; `manifest_for`
    (dir holding them, final relative names) -> manifest dict. Safe to call again after it returned or failed
    at any step, with the same arguments."""
    ops = ops or FileOps()
    done = read_own_manifest(output, ops)
    if done is not None and done.get("run_id") == run_id:  # a retry after the renames
        return _seal(output, staging, run_id, within_budget, ops)
    kept = read_own_manifest(staging, ops)
    if kept is not None and kept.get("run_id") == run_id:  # a retry of a kept-aside run
        return staging
    found = scan(output)
    if found.odd:
        raise OutputError(f"{output}/{found.odd[0]} became a symlink or not a regular file "
                          "while the run was writing; refusing to write through it")
    if not within_budget and SUCCESS in found.files:
        # never replace a good previous run with one over its error budget
        _place(staging, renames, ops)
        manifest = manifest_for(staging, sorted(renames.values()))
        ops.write(_join(staging, MANIFEST), json.dumps(manifest, indent=2).encode())
        _LOG.info("finalize: over the error budget; the previous outputs in %s are kept, this "
                  "run's are in %s", output, staging)
        return staging
    targets = set(renames.values())
    old_manifest = read_own_manifest(output, ops)
    if not overwrite and old_manifest is not None:
        raise OutputError(f"{output} gained a finished run's outputs while this run was "
                          f"writing ({output}/{MANIFEST}); not replacing them without "
                          "--overwrite")
    old = [f for f in found.files if f not in targets and f not in (SUCCESS, MANIFEST)]
    # the previous run stops looking final before anything of it changes
    for relative in (SUCCESS, MANIFEST):
        if relative in found.files:
            ops.delete(_join(output, relative))
    for relative in old:
        ops.delete(_join(output, relative))
    if old:
        _LOG.info("finalize: removed %d files of a previous run", len(old))
    _place(output, renames, ops)
    manifest = manifest_for(output, sorted(targets))
    pending = _join(staging, "manifest.pending")  # not MANIFEST: that marks a kept-aside run
    ops.write(pending, json.dumps(manifest, indent=2).encode())
    ops.rename(pending, _join(output, MANIFEST))
    return _seal(output, staging, run_id, within_budget, ops)


def _place(root: str, renames: dict[str, str], ops: FileOps) -> None:
    for source, relative in sorted(renames.items(), key=lambda kv: _placement_order(kv[1])):
        target = _join(root, relative)
        if ops.exists(source):
            ops.rename(source, target)
        elif not ops.exists(target):
            raise OutputError(f"staged file {source} is missing and {target} was never "
                              "written; the run's outputs are incomplete: run it again")


def _seal(output: str, staging: str, run_id: str, within_budget: bool, ops: FileOps) -> str:
    """Write _SUCCESS (within the budget), then clean up: this run's staging dir, and, once a
    run has succeeded, the staging dirs that killed runs left behind."""
    if within_budget and not ops.exists(_join(output, SUCCESS)):
        ops.write(_join(staging, SUCCESS), b"")
        ops.rename(_join(staging, SUCCESS), _join(output, SUCCESS))
    ops.remove_tree(staging)
    if within_budget:
        for stale in scan(output).staging:
            if stale != staging_name(run_id):
                _LOG.info("finalize: removing %s/%s, left by a run that did not finish",
                          output, stale)
                ops.remove_tree(_join(output, stale))
    if is_remote(output):
        release_remote_lock(output, run_id)
    return output


def run_outputs_dir(output: str, run_id: str) -> str | None:
    """Where a finished run's outputs are: the output dir, or its staging dir when it was over
    its error budget and a previous good run was kept; None if the run never finalized."""
    for directory in (output, _join(output, staging_name(run_id))):
        manifest = read_own_manifest(directory)
        if manifest is not None and manifest.get("run_id") == run_id:
            return directory
    return None
