"""The one feature spec: what a parsing serving signature's `parse_example` expects.

A `FeatureSpec` is an ordered mapping of feature name -> `Feature`. It round-trips to JSON (the
`--feature_spec` file format) and to `tf.io` feature objects, so the same object exports a
parsing signature (transforms.export) and parses the pipeline's inputs.

JSON format (`{"features": {...}}`; a bare `{name: {...}}` mapping is accepted too):

    {"features": {
        "age":   {"kind": "fixed",  "dtype": "float32", "shape": [1], "default": [0.0]},
        "ids":   {"kind": "fixed",  "dtype": "int64",   "shape": [3]},
        "tags":  {"kind": "varlen", "dtype": "string"},
        "hist":  {"kind": "ragged", "dtype": "float32"}}}

`shape` is per example (without the batch dimension); a fixed feature without `default` is
required: a record that lacks it is rejected by `parse_example` (and becomes an error row).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Mapping, Sequence

from transforms.errors import FeatureSpecError

__all__ = ["DTYPES", "KINDS", "MAX_SPEC_BYTES", "Feature", "FeatureSpec", "FeatureSpecError"]

DTYPES = ("float32", "int64", "string")
KINDS = ("fixed", "varlen", "ragged")
MAX_SPEC_BYTES = 16 << 20  # a spec of thousands of features is well under 1 MB
_INT64 = (-(1 << 63), (1 << 63) - 1)




@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...] = ()
    default: tuple | None = None  # flattened default values (fixed only), None = required

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FeatureSpecError(f"feature {self.name!r}: kind must be one of {KINDS}, "
                                   f"got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise FeatureSpecError(f"feature {self.name!r}: dtype must be one of {DTYPES}, "
                                   f"got {self.dtype!r}")
        if self.kind != "fixed" and (self.shape or self.default is not None):
            raise FeatureSpecError(f"feature {self.name!r}: only fixed features take a shape "
                                   "or a default")
        if self.kind == "fixed" and any(not _is_int(d) or d < 0 for d in self.shape):
            raise FeatureSpecError(f"feature {self.name!r}: shape must be non-negative "
                                   f"integers, got {list(self.shape)}")
        if self.default is not None:
            if len(self.default) not in (1, self.num_values):
                raise FeatureSpecError(
                    f"feature {self.name!r}: default has {len(self.default)} values, shape "
                    f"{list(self.shape)} needs {self.num_values}")

    @property
    def num_values(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def required(self) -> bool:
        return self.kind == "fixed" and self.default is None

    def full_default(self) -> tuple | None:
        """The default expanded to every value of the shape (parse_example broadcasts one)."""
        if self.default is None:
            return None
        if len(self.default) == self.num_values:
            return tuple(self.default)
        return tuple(self.default) * self.num_values

    def same_as(self, other: "Feature") -> bool:
        """Parses the same values: like ==, but a one-value default equals its broadcast
        (`[0.0]` for shape [3] is `[0.0, 0.0, 0.0]`, which is how parse ops store it) and NaN
        defaults are equal."""
        if (self.name, self.kind, self.dtype, self.shape) != \
                (other.name, other.kind, other.dtype, other.shape):
            return False
        mine, theirs = self.full_default(), other.full_default()
        if mine is None or theirs is None:
            return mine is theirs
        return all(a == b or (a != a and b != b) for a, b in zip(mine, theirs))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "dtype": self.dtype}
        if self.kind == "fixed":
            out["shape"] = list(self.shape)
            if self.default is not None:
                out["default"] = [_json_value(v) for v in self.default]
        return out

    @classmethod
    def from_json(cls, name: str, obj: Mapping) -> "Feature":
        if not isinstance(obj, Mapping):
            raise FeatureSpecError(f"feature {name!r}: expected an object, got {obj!r}")
        unknown = set(obj) - {"kind", "dtype", "shape", "default"}
        if unknown:
            raise FeatureSpecError(f"feature {name!r}: unknown keys {sorted(unknown)}")
        kind = obj.get("kind", "fixed")
        dtype = obj.get("dtype")
        shape = _shape(obj.get("shape", ()), name) if kind == "fixed" else ()
        default = obj.get("default")
        if default is not None:
            if not isinstance(default, (list, tuple)):
                default = [default]
            default = tuple(_coerce(v, dtype, name) for v in default)
        return cls(name=name, kind=kind, dtype=dtype, shape=shape, default=default)

    def to_tf(self):
        import tensorflow as tf
        dtype = tf.dtypes.as_dtype(self.dtype)
        if self.kind == "fixed":
            default = None
            if self.default is not None:
                default = list(self.full_default())
                if self.dtype == "string":
                    default = [v.encode() if isinstance(v, str) else v for v in default]
            return tf.io.FixedLenFeature(list(self.shape), dtype, default_value=default)
        if self.kind == "varlen":
            return tf.io.VarLenFeature(dtype)
        return tf.io.RaggedFeature(dtype)

    @classmethod
    def from_tf(cls, name: str, feature) -> "Feature":
        import numpy as np
        import tensorflow as tf
        dtype = tf.dtypes.as_dtype(feature.dtype).name
        if isinstance(feature, tf.io.FixedLenFeature):
            default = feature.default_value
            if default is not None:
                default = tuple(np.asarray(default).ravel().tolist())
                default = tuple(_coerce(v, dtype, name) for v in default)
            return cls(name, "fixed", dtype, tuple(int(d) for d in feature.shape), default)
        if isinstance(feature, tf.io.VarLenFeature):
            return cls(name, "varlen", dtype)
        if isinstance(feature, tf.io.RaggedFeature):
            if feature.partitions:
                raise FeatureSpecError(f"feature {name!r}: ragged features with partitions "
                                       "are not supported")
            return cls(name, "ragged", dtype)
        raise FeatureSpecError(f"feature {name!r}: unsupported feature type "
                               f"{type(feature).__name__}")

    def describe(self) -> str:
        if self.kind == "fixed":
            dflt = "required" if self.default is None else f"default={list(self.default)}"
            return f"fixed {self.dtype}{list(self.shape)} {dflt}"
        return f"{self.kind} {self.dtype}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value, name: str) -> tuple[int, ...]:
    """A fixed feature's shape as written in JSON: a list of non-negative integers."""
    if not isinstance(value, (list, tuple)) or not all(_is_int(d) and d >= 0 for d in value):
        hint = f" (write [{value}])" if _is_int(value) and value >= 0 else ""
        raise FeatureSpecError(f"feature {name!r}: shape must be a list of non-negative "
                               f"integers, [] for one value per example, got "
                               f"{json.dumps(value)[:60]}{hint}")
    return tuple(value)


def _coerce(value, dtype: str | None, name: str):
    # a list, object, null or true/false is never a default value (JSON true would pass for 1)
    if value is None or isinstance(value, (bool, list, tuple, dict)):
        text = json.dumps(value, default=str)[:60]
        raise FeatureSpecError(f"feature {name!r}: default {text} is not a {dtype}")
    try:
        if dtype == "float32":
            return float(value)
        if dtype == "int64":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(value)
            if not _INT64[0] <= number <= _INT64[1]:
                raise ValueError(value)
            return number
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise FeatureSpecError(f"feature {name!r}: default {repr(value)[:60]} is not a "
                               f"{dtype}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are unique: a repeated feature would otherwise silently keep
    its last definition."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise FeatureSpecError(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _json_value(v):
    return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v


class FeatureSpec(Mapping[str, Feature]):
    """An ordered, immutable mapping name -> Feature (picklable, cheap to ship to workers)."""

    def __init__(self, features: Sequence[Feature] | Mapping[str, Feature]):
        if isinstance(features, Mapping):
            features = list(features.values())
        self._features = {f.name: f for f in features}
        if len(self._features) != len(features):
            raise FeatureSpecError("feature names must be unique")

    def __getitem__(self, name: str) -> Feature:
        return self._features[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)

    def __eq__(self, other) -> bool:
        return isinstance(other, FeatureSpec) and self._features == other._features

    def __repr__(self) -> str:
        return f"FeatureSpec({', '.join(f'{f.name}: {f.describe()}' for f in self.values())})"

    # JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"features": {name: f.to_json() for name, f in self.items()}}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, obj: Mapping) -> "FeatureSpec":
        if not isinstance(obj, Mapping):
            raise FeatureSpecError("a feature spec is a JSON object {\"features\": {...}}")
        features = obj.get("features", obj)
        if not isinstance(features, Mapping):
            raise FeatureSpecError("\"features\" must be an object of name: {\"kind\", "
                                   f"\"dtype\", ...}}, got a {type(features).__name__}")
        if not features:
            raise FeatureSpecError("a feature spec needs at least one feature under "
                                   "\"features\"")
        return cls([Feature.from_json(name, f) for name, f in features.items()])

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        from apache_beam.io.filesystems import FileSystems
        try:
            with FileSystems.open(path) as fh:
                data = fh.read(MAX_SPEC_BYTES + 1)  # never a whole /dev/zero or a data file
        except (OSError, ValueError) as e:  # ValueError: a path of no known filesystem
            raise FeatureSpecError(f"cannot read feature spec {path}: "
                                   f"{' '.join(str(e).split())}") from None
        if len(data) > MAX_SPEC_BYTES:
            raise FeatureSpecError(f"feature spec {path} is larger than {MAX_SPEC_BYTES >> 20} "
                                   "MiB; it is not a feature spec JSON file")
        skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a byte order mark is accepted
        try:
            text = data[skip:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise FeatureSpecError(f"feature spec {path} is not UTF-8 text (byte "
                                   f"0x{data[skip + e.start]:02x} at offset {skip + e.start})"
                                   ) from None
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise FeatureSpecError(f"feature spec {path} is not valid JSON: {e}") from None
        except FeatureSpecError as e:  # a repeated key
            raise FeatureSpecError(f"feature spec {path}: {e}") from None
        except RecursionError:
            raise FeatureSpecError(f"feature spec {path} is nested too deeply to be a "
                                   "feature spec") from None
        try:
            return cls.from_json(obj)
        except FeatureSpecError as e:
            raise FeatureSpecError(f"feature spec {path}: {e}") from None

    # tf.io -----------------------------------------------------------------------------------
    def to_tf(self) -> dict:
        return {name: f.to_tf() for name, f in self.items()}

    @classmethod
    def from_tf(cls, features: Mapping) -> "FeatureSpec":
        return cls([Feature.from_tf(name, f) for name, f in features.items()])

    # comparison ------------------------------------------------------------------------------
    def diff(self, model_spec: "FeatureSpec") -> list[str]:
        """Human-readable differences between this (given) spec and the model's."""
        out = []
        for name in self:
            if name not in model_spec:
                out.append(f"{name}: in the given spec but not parsed by the model")
            elif not self[name].same_as(model_spec[name]):
                out.append(f"{name}: given {self[name].describe()}, "
                           f"model parses {model_spec[name].describe()}")
        for name in model_spec:
            if name not in self:
                out.append(f"{name}: parsed by the model ({model_spec[name].describe()}) "
                           "but missing from the given spec")
        return out
