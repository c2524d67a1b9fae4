"""The one home of this tool's failure vocabulary.

Exceptions: a `UserError` means the user must change something (an option, a file, the
model, the output dir); the launcher prints its message as one `error:` line and exits 2,
before any worker starts. Each kind names where the problem is.

Error types: the `error_type` of a dead-letter row (`errors-*.jsonl`), one per reason a single
record is rejected while the job runs.
"""
from __future__ import annotations

__all__ = ["UserError", "OptionsError", "InputError", "FeatureSpecError", "ModelError",
           "StagingError", "OutputError", "ERROR_TYPES"]


class UserError(ValueError):
    """Something the user must change; the message says what."""


class OptionsError(UserError):
    """The command line cannot run as meant: an unknown option, a stray argument, a missing or
    unusable value, runner options that cannot work."""


class InputError(UserError):
    """Input options or files that cannot be used."""


class FeatureSpecError(UserError):
    """A feature spec is malformed, or does not match the model's."""


class ModelError(UserError):
    """The model cannot be used as asked."""


class StagingError(ModelError):
    """The model cannot be staged from GCS."""


class OutputError(UserError):
    """The output location cannot be used as asked."""


ERROR_TYPES = {
    "corrupt_record": "a TFRecord frame whose data CRC does not match, a truncated last record, "
                      "or a record larger than --max_record_bytes (skipped)",
    "unreadable_tail": "the rest of a file could not be read (bad length CRC, not a TFRecord, "
                       "a record length past the end of the file, broken gzip, a CSV first "
                       "line that is not a header); `message` says how many records were read "
                       "before it",
    "csv_format": "a CSV row with the wrong number of columns, unparseable CSV syntax, a line "
                  "longer than --max_record_bytes, or a row of a file whose header does not "
                  "fit the feature spec (a repeated or case-mismatched column, a missing "
                  "required feature, none of the features)",
    "parse_error": "a value that cannot be converted to the feature's dtype, or a record that "
                   "is not a tf.Example",
    "missing_feature": "a required feature (fixed, no default) is absent or empty",
    "type_mismatch": "a feature holds another type than the spec's (e.g. int64 for float)",
    "shape_mismatch": "a fixed feature with the wrong number of values",
    "missing_key": "the --key_field is absent from the record, or its CSV cell is empty",
    "model_error": "the model call failed for this record alone",
    "key_mismatch": "the model forwards the --key_field as an output of the same name (checked "
                    "at start-up), but for this record its output differs from the key",
}
