"""The format seam: input and output formats, each one module, registered here by name.

An input format (`transforms.formats.base.InputFormat`) turns one shard into record batches
and error rows, and says which file name endings are its own and how the key's dtype is found;
an output format (`OutputFormat`) turns a prediction batch into text, with its file suffix and
header line. Built in: input `tfrecord` and `csv`, output `jsonl` and `csv`.

Everything that depends on the set of formats asks these registries: the command line's
choices (`--input_format`, `--output_format`), the inference of the input format from file
names, the reading and writing steps, and the output dir's own file names. Adding a format is
one module and one `register_input_format` / `register_output_format` call below; a format
registered later (a test's, a plugin's) works the same way.
"""
from __future__ import annotations

from transforms.errors import InputError, OptionsError
from transforms.formats import csv_input, csv_output, jsonl_output, tfrecord_input
from transforms.formats import jsonl_input
from transforms.formats import parquet_input
from transforms.formats import parquet_output, tfrecord_output
from transforms.formats.base import InputFormat, OutputFormat

__all__ = ["INPUT_FORMATS", "OUTPUT_FORMATS", "InputFormat", "OutputFormat",
           "register_input_format", "register_output_format", "input_format", "output_format",
           "infer_input_format"]

INPUT_FORMATS: dict[str, InputFormat] = {}
OUTPUT_FORMATS: dict[str, OutputFormat] = {}


def register_input_format(fmt: InputFormat) -> InputFormat:
    """Make `fmt` the input format of its name and of its extensions; returns it. Refuses a
    name or an extension that another registered format has."""
    if INPUT_FORMATS.get(fmt.name, fmt) is not fmt:
        raise ValueError(f"an input format named {fmt.name!r} is registered already")
    for other in INPUT_FORMATS.values():
        shared = sorted(set(other.extensions) & set(fmt.extensions)) if other is not fmt else []
        if shared:
            raise ValueError(f"input format {fmt.name!r}: extension {shared[0]} belongs to "
                             f"input format {other.name!r}")
    INPUT_FORMATS[fmt.name] = fmt
    return fmt


def register_output_format(fmt: OutputFormat) -> OutputFormat:
    """Make `fmt` the output format of its name; returns it. Refuses a name or a file suffix
    that another registered format has."""
    if OUTPUT_FORMATS.get(fmt.name, fmt) is not fmt:
        raise ValueError(f"an output format named {fmt.name!r} is registered already")
    for other in OUTPUT_FORMATS.values():
        if other is not fmt and other.suffix == fmt.suffix:
            raise ValueError(f"output format {fmt.name!r}: suffix {fmt.suffix} belongs to "
                             f"output format {other.name!r}")
    OUTPUT_FORMATS[fmt.name] = fmt
    return fmt


register_input_format(tfrecord_input.TFRECORD)
register_input_format(csv_input.CSV)
register_input_format(jsonl_input.JSONL)
register_input_format(parquet_input.PARQUET)
register_output_format(jsonl_output.JSONL)
register_output_format(csv_output.CSV)
register_output_format(parquet_output.PARQUET)
register_output_format(tfrecord_output.TFRECORD)
register_output_format(tfrecord_output.TFRECORD_GZIP)


def input_format(name: str) -> InputFormat:
    """The registered input format of that name (InputError if there is none)."""
    try:
        return INPUT_FORMATS[name]
    except KeyError:
        raise InputError(f"--input_format must be one of {tuple(INPUT_FORMATS)}, "
                         f"got {name!r}") from None


def output_format(name: str) -> OutputFormat:
    """The registered output format of that name (OptionsError if there is none)."""
    try:
        return OUTPUT_FORMATS[name]
    except KeyError:
        raise OptionsError(f"--output_format must be one of {tuple(OUTPUT_FORMATS)}, "
                           f"got {name!r}") from None


def _by_extension(path: str) -> InputFormat | None:
    """The format whose extension is the longest ending of the path (case-insensitive)."""
    name = path.lower()
    found = [(len(ext), fmt) for fmt in INPUT_FORMATS.values() for ext in fmt.extensions
             if name.endswith(ext)]
    return max(found, key=lambda f: f[0])[1] if found else None


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def infer_input_format(paths: list[str]) -> InputFormat:
    """The one input format that the paths' extensions name; InputError for a path whose
    extension names none, and for paths of more than one format."""
    found: dict[str, InputFormat] = {}
    for path in paths:
        fmt = _by_extension(path)
        if fmt is None:
            raise InputError(f"cannot infer the input format of {path} from its extension; "
                             f"pass --input_format {'|'.join(INPUT_FORMATS)}")
        found.setdefault(fmt.name, fmt)
    if not found:
        raise InputError("no input files to infer the input format of; pass --input_format")
    if len(found) > 1:
        titles = sorted(fmt.title for fmt in found.values())
        raise InputError(f"the inputs mix {_and(titles)} files; score them in separate jobs "
                         "or pass --input_format")
    return next(iter(found.values()))
