"""Command-line options of the batch prediction job (a PipelineOptions subclass), and the check
of a whole command line before anything starts.

Every other flag is Beam's own (`--runner`, `--direct_num_workers`, `--project`, ...) and passes
through untouched; a flag that neither this job nor Beam defines is refused (`check_argv`),
because Beam would only log "Discarding unparseable args" and run with the defaults.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import math
import os
import sys
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from transforms.bigquery.tables import parse_input_table, parse_output_table
from transforms.errors import OptionsError
from transforms.formats import INPUT_FORMATS, OUTPUT_FORMATS
from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES
from transforms.graph_models import parse_tensor_map
from transforms.read import DEFAULT_SPLIT_BYTES, MIN_SPLIT_BYTES

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_ERROR_RATE", "DEFAULT_MAX_RECORD_BYTES", "PROG",
           "CONSOLE_SCRIPT", "SUBCOMMANDS", "OPTION_GROUPS", "BEAM_OPTIONS_DOCS",
           "BatchPredictOptions", "all_options_parser", "check_argv", "help_text", "print_help",
           "program_name"]

DEFAULT_BATCH_SIZE = 8192  # from `python -m benchmarks --only batch` (benchmarks/RESULTS.md)
DEFAULT_MAX_ERROR_RATE = 0.01
PROG = "python -m pipeline"
CONSOLE_SCRIPT = "batch-predict"  # setup.py's console_scripts entry point
# the subcommands pipeline/__main__.py dispatches, as --help lists them
SUBCOMMANDS = {
    "describe": "--model M: the model's signatures, feature spec, version, size",
    "demo": "build the embedded demo model and data, and score them",
    "optimize": "--model M --output DIR: an inference-optimized, checked copy",
    "report": "OUTPUT: render OUTPUT/report.html again from a finished run",
}
# --help shows this job's options in these groups, by option name; an option missing here is
# listed under "other" (tests/test_help.py checks that none is)
OPTION_GROUPS = {
    "inputs": ("input", "input_query", "input_format", "feature_spec", "key_field",
               "key_dtype", "passthrough_fields", "csv_list_separator", "max_record_bytes"),
    "model": ("model", "model_inputs", "model_outputs", "signature", "model_cache_dir"),
    "outputs": ("output", "output_table", "output_format", "overwrite"),
    "performance": ("batch_size", "concurrent_model_calls", "tf_intra_op_threads",
                    "tf_inter_op_threads", "split_bytes", "reshuffle_batches"),
    "reliability": ("max_error_rate",),
    "this run": ("plan_only", "plan_sample", "verbose"),
}
BEAM_OPTIONS_DOCS = (
    "https://beam.apache.org/documentation/programming-guide/#configuring-pipeline-options",
    "https://cloud.google.com/dataflow/docs/reference/pipeline-options",
)


# --- value types: each says what it accepts, so argparse's message is one actionable line ----
def _int(text: str, accepted: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{accepted}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text, "must be a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text, "must be an integer >= 0 (0 = TensorFlow's default)")
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 0 (0 = TensorFlow's default), got {text!r}")
    return value


def _split_bytes(text: str) -> int | str:
    accepted = (f"must be 'auto', 0 (read files whole) or a number of bytes >= "
                f"{MIN_SPLIT_BYTES}")
    if text == "auto":
        return text
    value = _int(text, accepted)
    if value < 0 or 0 < value < MIN_SPLIT_BYTES:
        raise argparse.ArgumentTypeError(f"{accepted}, got {text!r}")
    return value


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    accepted = "must be a positive integer or 'auto'"
    value = _int(text, accepted)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{accepted}, got {text!r}")
    return value


def _rate(text: str) -> float:
    accepted = "must be a fraction of records from 0 to 1 (e.g. 0.01; 1 disables the check)"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{accepted}, got {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{accepted}, got {text!r}")
    return value


def _text(what: str):
    """A value that must say something: an empty one would silently mean another thing (no
    spec, the default cache dir) or fail late (a model or output path of '')."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty; give {what}")
        return text
    parse.__name__ = "text"
    return parse


def _patterns(text: str) -> str:
    if not any(p.strip() for p in text.split(",")):
        raise argparse.ArgumentTypeError(
            f"names no file pattern, got {text!r}; give comma-separated globs, local or gs://")
    if text.strip().startswith("bq://"):  # a BigQuery table, whole
        try:
            parse_input_table(text.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _output_table(text: str) -> str:
    try:
        parse_output_table(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _field_names(text: str) -> str:
    """Comma-separated field names, none empty (`a,,b` or a trailing comma is a typo)."""
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise argparse.ArgumentTypeError(
            f"names an empty field in {text!r}; give comma-separated feature or column names, "
            "e.g. 'customer_id,region'")
    return text


def _tensor_map(text: str) -> str:
    """`NAME:TENSOR,...`, each pair well formed and each name once (a frozen graph's inputs or
    outputs); the tensors themselves are checked against the graph when it loads."""
    try:
        parse_tensor_map(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _list_separator(text: str) -> str:
    """A CSV cell's value separator: a newline, carriage return or quote in it would split or
    quote the row itself, and an empty one cannot split anything."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; give the separator of values inside one "
                                         "CSV cell, e.g. '|' or ';'")
    bad = [c for c in ("\n", "\r", '"') if c in text]
    if bad:
        raise argparse.ArgumentTypeError(
            f"may not contain {', '.join(map(repr, bad))} (CSV row or quoting characters), "
            f"got {text!r}")
    return text


class BatchPredictOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--model", required=True,
            type=_text("a SavedModel dir, an export base dir or a frozen graph .pb file"),
            help="SavedModel dir, or an export base dir of numeric timestamped versions (the "
                 "newest wins; temp-* dirs are ignored), or a frozen GraphDef file (*.pb, see "
                 "--model_inputs); local path or gs://")
        parser.add_argument(
            "--model_inputs", default=None, type=_tensor_map,
            help="a frozen graph's inputs as NAME:TENSOR,... (e.g. "
                 "examples:input_example_tensor:0): each becomes a signature input NAME fed "
                 "to TENSOR. Without it (and --model_outputs) they are read from the sidecar "
                 "<graph>.pb.json, {\"inputs\": {NAME: TENSOR}, \"outputs\": {...}}")
        parser.add_argument(
            "--model_outputs", default=None, type=_tensor_map,
            help="a frozen graph's outputs as NAME:TENSOR,... (e.g. score:head/score:0): "
                 "prediction column NAME is TENSOR; else read from the sidecar")
        parser.add_argument(
            "--input", default=None, type=_patterns,
            help="comma-separated file patterns (globs), local or gs://; or a BigQuery table, "
                 "bq://project.dataset.table (read with the Storage Read API; needs "
                 "--key_field). Required unless --input_query is given")
        parser.add_argument(
            "--input_query", default=None, type=_text("a Standard SQL query"),
            help="a Standard SQL query whose rows are the input, instead of --input (needs "
                 "--key_field); it runs in Beam's --project, else in the project of the first "
                 "project.dataset.table it names")
        parser.add_argument(
            "--output", required=True,
            type=_text("the output dir, a local path or gs://bucket/path"),
            help="output dir for predictions-*, errors-*, metrics/ and _SUCCESS")
        parser.add_argument(
            "--output_table", default=None, type=_output_table,
            help="BigQuery table for the predictions, project:dataset.table (or "
                 "project.dataset.table), optionally one day partition $YYYYMMDD; loaded into "
                 "a staging table and copied into place when the run finalizes within its "
                 "error budget (a table or partition holding rows is refused unless "
                 "--overwrite). Errors, metrics, manifest.json and _SUCCESS still go to "
                 "--output")
        by_extension = "; ".join(f"{', '.join(f.extensions)} -> {f.name}"
                                 for f in INPUT_FORMATS.values())
        parser.add_argument(
            "--input_format", choices=list(INPUT_FORMATS), default=None,
            help=f"input format; inferred from the extension when omitted ({by_extension}). "
                 "gzip is detected from content")
        parser.add_argument(
            "--feature_spec", default=None,
            type=_text("a feature spec JSON file, or leave the option out"),
            help="feature spec JSON file; by default the spec is read from the model's parse "
                 "op (or its input signature for raw-tensor signatures). A given spec is "
                 "checked against the model's")
        parser.add_argument(
            "--signature", default="serving_default", type=_text("a signature name"),
            help="signature to call")
        parser.add_argument(
            "--key_field", default=None,
            type=_text("a feature or column name, or leave the option out"),
            help="feature/column copied into every prediction row to join on; without it rows "
                 "carry their source shard and record index")
        parser.add_argument(
            "--passthrough_fields", type=_field_names, default=None,
            help="comma-separated input fields (columns or tf.Example features) copied into "
                 "every prediction row after the key, with their type (a spec feature as the "
                 "model got it); an unknown field is refused at start-up")
        parser.add_argument(
            "--key_dtype", choices=["auto", "string", "int64", "float32"], default="auto",
            help="dtype of --key_field in tf.Examples: auto = the spec's dtype if the key is a "
                 "model feature, else read from the first record of the first input")
        parser.add_argument(
            "--batch_size", type=_batch_size, default=DEFAULT_BATCH_SIZE,
            help="maximum records per model call (and per element read); 'auto': start at "
                 f"{DEFAULT_BATCH_SIZE} and double (up to 32768) while the model's records/s "
                 "improves by a tenth or more, backing off on out-of-memory, per worker process")
        parser.add_argument(
            "--output_format", choices=list(OUTPUT_FORMATS), default="jsonl",
            help="format of predictions-* files")
        parser.add_argument(
            "--csv_list_separator", default="|", type=_list_separator,
            help="separator of values inside one CSV cell, for multi-valued features")
        parser.add_argument(
            "--max_error_rate", type=_rate, default=DEFAULT_MAX_ERROR_RATE,
            help="error rows / records above which the run fails (non-zero exit, no _SUCCESS); "
                 "1.0 disables the check")
        parser.add_argument(
            "--overwrite", action="store_true", default=False,
            help="replace the outputs of a previous run in --output (only once this run "
                 "finishes); without it a non-empty output dir is refused")
        parser.add_argument(
            "--model_cache_dir", default=None,
            type=_text("a local dir, or leave the option out"),
            help="local dir where gs:// models are staged on each worker (default: a dir "
                 "under the system temp dir)")
        parser.add_argument(
            "--concurrent_model_calls", type=_positive_int, default=1,
            help="model calls in flight at once per worker process, sharing its TensorFlow "
                 "thread pools. 2 can help compute-bound models (several wide dense layers); "
                 "whether it does depends on the CPU and the run, so measure before adopting "
                 "it. Light models, bound by reading and formatting, gain little or lose")
        parser.add_argument(
            "--tf_intra_op_threads", type=_non_negative_int, default=0,
            help="TensorFlow intra-op threads per worker process (0 = TensorFlow's default, "
                 "one per core, also with local multi_processing workers or "
                 "--concurrent_model_calls)")
        parser.add_argument(
            "--tf_inter_op_threads", type=_non_negative_int, default=0,
            help="TensorFlow inter-op threads per worker process (0 = TensorFlow's default)")
        parser.add_argument(
            "--max_record_bytes", type=_positive_int, default=DEFAULT_MAX_RECORD_BYTES,
            help="largest TFRecord record or CSV line accepted; a longer one is an error row "
                 "(corrupt_record / csv_format), never an allocation of its size")
        parser.add_argument(
            "--split_bytes", type=_split_bytes, default="auto",
            help="plain (not gzip) TFRecord and CSV files larger than this are read in ranges "
                 "of this many bytes, by as many workers as there are ranges; 0 = one reader "
                 f"per file; auto = {DEFAULT_SPLIT_BYTES >> 20} MiB when the job has more than "
                 "one worker process, else 0 (one process reads ranges one after another, and "
                 "indexing them costs a pass over the file)")
        parser.add_argument(
            "--reshuffle_batches", choices=["auto", "on", "off"], default="auto",
            help="redistribute record batches across workers between reading and the model "
                 "(a Reshuffle): auto = on Dataflow, when the input gives fewer independent "
                 "reads (files, ranges of large files; a gzip file is one) than the job has "
                 "worker processes; never on the local runner, whose Reshuffle holds the whole "
                 "input in memory")
        # not --dry_run: that is Beam's own option (it takes a value, and any non-empty one is
        # true) with which DataflowRunner builds a job without submitting it; this one stops
        # before any runner is involved
        parser.add_argument(
            "--plan_only", action="store_true", default=False,
            help="check the options, inputs, model and output location, print the plan "
                 "(inputs and their bytes, formats, model, signature, spec, outputs, runner) "
                 "and exit 0, without scoring and without touching the output dir")
        parser.add_argument(
            "--plan_sample", type=int, default=0, metavar="N",
            help="with --plan_only: also read, parse and score the first N records of the "
                 "first input file here, print what one model call costs, and estimate the "
                 "records and the work of the whole run from them (0: no sample)")
        parser.add_argument(
            "--verbose", action="store_true", default=False,
            help="also show TensorFlow's start-up lines (oneDNN, CUDA probing), hidden by "
                 "default; a TF_CPP_MIN_LOG_LEVEL set in the environment is honoured either way")

    @staticmethod
    def check_argv(argv: Sequence[str] | None = None) -> None:
        """`check_argv` below: refuse a command line the job cannot run as meant."""
        check_argv(argv)

    def input_patterns(self) -> list[str]:
        return [p.strip() for p in self.input.split(",") if p.strip()]


# --- the whole command line --------------------------------------------------------------------
class _CheckingParser(_BeamArgumentParser):
    """Beam's parser, raising OptionsError where argparse would print its usage and exit."""

    def error(self, message):
        if message.startswith("ambiguous option: "):  # ignored, as Beam's parser does
            return
        raise OptionsError(_reword(message))


def _reword(message: str) -> str:
    """argparse's message as one line that names the option and says what to change."""
    message = " ".join(message.split())
    if message.startswith("argument "):
        message = message[len("argument "):]
        option, _, reason = message.partition(": ")
        option = option.split("/")[-1]  # '-h/--help' -> '--help'
        if reason == "expected one argument":
            return f"{option} needs a value ({option} VALUE or {option}=VALUE)"
        if reason.startswith("ignored explicit argument "):
            value = reason[len("ignored explicit argument "):]
            return (f"{option} is an on/off flag and takes no value, got {value}; give "
                    f"{option} alone to turn it on, or leave it out")
        return f"{option}: {reason}"
    return message


# Modules that define more PipelineOptions subclasses; Beam imports them only with their runner
# (which reads its options after that), so they are imported before an unknown flag is refused.
_MORE_OPTION_MODULES = ("apache_beam.runners.render", "apache_beam.yaml.options",
                        "apache_beam.runners.dask.dask_runner")
_more_imported = False


def _import_more_option_classes() -> bool:
    global _more_imported
    if _more_imported:
        return False
    _more_imported = True
    for name in _MORE_OPTION_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # an optional runner's dependencies missing: its flags are unknown
            pass
    return True


def _option_classes() -> list[type]:
    """Every PipelineOptions subclass that defines options, Beam's and ours, once each (by
    name, as PipelineOptions.get_all_options picks them), ours first so that our own types
    check our own flags whatever else is loaded."""
    found, stack = {}, list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop(0)
        stack.extend(cls.__subclasses__())
        if "_add_argparse_args" in cls.__dict__:
            found.setdefault(str(cls), cls)
    return sorted(found.values(), key=lambda c: c is not BatchPredictOptions)


def all_options_parser() -> tuple[_CheckingParser, list[argparse.Action]]:
    """A parser of every option Beam and this job define, with nothing required (missing
    options are reported after unknown ones), and the actions that are required."""
    parser = _CheckingParser(prog=PROG, allow_abbrev=False, add_help=False)
    for cls in _option_classes():
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:  # it re-defines a flag added already (a subclass of
            pass                        # another options class): that flag is known
    required = [a for a in parser._actions if a.required]
    for action in required:
        action.required = False
    return parser, required


def _unknown(arg: str, parser: argparse.ArgumentParser) -> str:
    if arg == "--" or not arg.startswith("-") or arg[1:2].isdigit():
        return (f"unexpected argument {arg!r}: every argument is an option, --name value or "
                f"--name=value (a value starting with '-' needs --name=VALUE)")
    name = arg.split("=", 1)[0]
    options = {opt.lstrip("-"): opt for action in parser._actions
               for opt in action.option_strings if opt.startswith("--")}
    close = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), list(options), n=1)
    if close:
        return f"unknown option {name}; did you mean {options[close[0]]}?"
    return (f"unknown option {name}: not an option of this job ({program_name()} --help) "
            "nor of Beam")


def _wants_help(argv: list[str]) -> bool:
    args = argv[:argv.index("--")] if "--" in argv else argv
    return "-h" in args or "--help" in args


def program_name(argv0: str | None = None) -> str:
    """How the user started this tool: the console script by its name, else `python -m
    pipeline` (sys.argv[0] is then the path of pipeline/__main__.py, or a test runner's)."""
    name = os.path.splitext(os.path.basename(sys.argv[0] if argv0 is None else argv0))[0]
    return CONSOLE_SCRIPT if name == CONSOLE_SCRIPT else PROG


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, or says that it is required; the description
    and epilog keep their own line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "(default:" in text:
            return text
        if action.required:
            return text + " (required)"
        if action.default is None:
            shown = "none"
        elif isinstance(action, argparse._StoreTrueAction):
            shown = "on" if action.default else "off"
        else:
            shown = str(action.default)
        return text + f" (default: {shown})".replace("%", "%%")


class _GroupedOptions:
    """What BatchPredictOptions._add_argparse_args sees as its parser: each option goes into
    its OPTION_GROUPS group of the help parser."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._parser = parser
        self._groups = {name: parser.add_argument_group(name)
                        for name in OPTION_GROUPS}

    def add_argument(self, *names, **kwargs):
        dest = names[0].lstrip("-")
        group = next((g for g, dests in OPTION_GROUPS.items() if dest in dests), None)
        if group is None:
            group = "other"
            if group not in self._groups:
                self._groups[group] = self._parser.add_argument_group(group)
        return self._groups[group].add_argument(*names, **kwargs)


def _help_parser(prog: str) -> argparse.ArgumentParser:
    commands = "\n".join(f"  {prog} {name:<9} {line}" for name, line in SUBCOMMANDS.items())
    docs = "".join(f"\n  {url}" for url in BEAM_OPTIONS_DOCS)
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, formatter_class=_HelpFormatter,
        usage=f"{prog} --model M --input GLOB --output DIR [options]\n"
              f"       {prog} SUBCOMMAND ...   (each subcommand has its own --help)",
        description="Batch scoring of a TensorFlow model on Apache Beam: a scoring job, or one "
                    "of these subcommands:\n" + commands,
        epilog="Every other option is Beam's or Dataflow's (--runner, --direct_num_workers,\n"
               "--direct_running_mode, --project, --region, --temp_location, --max_num_workers,\n"
               "--labels, ...) and goes to Beam as given; an option that neither this tool nor\n"
               "Beam defines is refused, naming the closest known one. Beam's and Dataflow's\n"
               "options are documented at" + docs + "\n"
               "and defined in apache_beam/options/pipeline_options.py of the installed "
               "apache-beam.")
    BatchPredictOptions._add_argparse_args(_GroupedOptions(parser))
    return parser


def help_text(prog: str | None = None) -> str:
    """The tool's --help: usage, subcommands, this job's options in groups with their defaults,
    and where Beam's own options are documented."""
    return _help_parser(prog or program_name()).format_help()


def print_help(prog: str | None = None) -> None:
    print(help_text(prog), end="")


def check_argv(argv: Sequence[str] | None = None) -> None:
    """Refuse a command line the job cannot run as meant, before anything starts: raises
    OptionsError with one line naming the option.

    Accepted: `--name value` and `--name=value` for every option this job or Beam defines
    (argparse, no abbreviations), on/off flags alone (`--overwrite`), repeatable options
    repeated. Refused: unknown options (with the closest known one, so `--key-field`
    suggests `--key_field`), arguments that are not options, values an option's type refuses,
    missing required options and unusable --labels. `-h`/`--help` prints this job's options
    and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if _wants_help(argv):
        print_help()
        raise SystemExit(0)
    parser, required = all_options_parser()
    namespace, extras = parser.parse_known_args(argv)
    if extras and _import_more_option_classes():
        parser, required = all_options_parser()
        namespace, extras = parser.parse_known_args(argv)
    if extras:
        raise OptionsError(_unknown(extras[0], parser))
    # the input is --input or --input_query: exactly one of them
    if getattr(namespace, "input", None) is not None and \
            getattr(namespace, "input_query", None) is not None:
        raise OptionsError("--input and --input_query both name the input; give one of them")
    queried = getattr(namespace, "input_query", None) is not None
    missing = [a.option_strings[0] for a in parser._actions
               if (a in required or (a.dest == "input" and not queried))
               and getattr(namespace, a.dest) is None]
    if missing:
        missing = [m + " (or --input_query)" if m == "--input" else m for m in missing]
        raise OptionsError(f"missing required option{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)} (e.g. --model gs://bucket/export/model "
                           "--input 'gs://bucket/data/part-*' --output gs://bucket/scores)")
    sample = getattr(namespace, "plan_sample", 0)
    if sample and not getattr(namespace, "plan_only", False):
        raise OptionsError(f"--plan_sample {sample} goes with --plan_only (a run measures "
                           "itself: see its summary and report.html)")
    if sample < 0:
        raise OptionsError(f"--plan_sample {sample}: give a number of records, 1 or more "
                           "(0: no sample)")
    from pipeline.provenance import parse_label_values
    parse_label_values(getattr(namespace, "labels", None))
