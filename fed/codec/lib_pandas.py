"""pandas DataFrame, Series, Index (all kinds listed below) and Categorical as data.

A value crosses as plain metadata (index kinds, names, dtypes) plus one numpy array
per column or index level (see pandas_arrays for the array kinds). The receiver
rebuilds it with pandas constructors picked from a fixed list by a checked kind
string; lengths are checked against each other first.

Index kinds: "range" (RangeIndex: start, stop, step), "multi" (MultiIndex: levels,
codes, names) and "values" (Index, DatetimeIndex with or without a time zone and its
freq, TimedeltaIndex, CategoricalIndex, and Index over any supported array kind).
Names (of a Series, an Index, MultiIndex levels, and column labels held in an
Index) may be None, str, int, float, bool, numpy numbers and flat tuples of those.

Copies: numeric, bool and datetime columns cross without a copy on the sender and
are wrapped without a copy on the receiver (one DataFrame block per column, as
pandas builds a frame from a dict of arrays). See pandas_arrays for the kinds that
are copied (strings, nullable dtypes, time-zone-aware datetimes).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fed.codec import libcheck
from fed.codec.pandas_arrays import as_index, decode_array, encode_array
from fed.codec.types import CodecOptions, LibraryCodec

FRAME, SERIES, INDEX, CATEGORICAL = ("pandas.DataFrame", "pandas.Series", "pandas.Index",
                                     "pandas.Categorical")
_SCALAR_LABELS = (type(None), str, int, float, bool)
MAX_FREQ = 64


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _is_label(value: Any, nested: bool = True) -> bool:
    if type(value) in _SCALAR_LABELS:
        return True
    if isinstance(value, np.generic):
        return value.dtype.kind in "biuf"
    return nested and type(value) is tuple and all(_is_label(v, False) for v in value)


def _label(value: Any, type_name: str, what: str) -> Any:
    if not _is_label(value):
        raise libcheck.unsupported(type_name, f"{what} {value!r} is a {type(value).__name__}; "
                                   "names must be None, str, int, float, bool or tuples of those")
    return value


def _check_label(tag: str, value: Any, what: str) -> Any:
    if not _is_label(value):
        raise libcheck.refuse(tag, f"{what} must be None, str, int, float, bool or a tuple "
                                   f"of those, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------ encode


def encode_index(index: Any, type_name: str | None = None) -> dict:
    """Any supported Index as a plain dict ("range", "multi" or "values")."""
    import pandas as pd

    type_name = type_name or _type_name(index)
    if isinstance(index, pd.RangeIndex):
        return {"kind": "range", "start": index.start, "stop": index.stop, "step": index.step,
                "name": _label(index.name, type_name, "index name")}
    if isinstance(index, pd.MultiIndex):
        # A level crosses as its values, so the receiver never expands a range it got.
        levels = [pd.Index(level.to_numpy()) if isinstance(level, pd.RangeIndex) else level
                  for level in index.levels]
        return {"kind": "multi", "levels": [encode_index(level, type_name) for level in levels],
                "codes": [np.asarray(codes) for codes in index.codes],
                "names": [_label(n, type_name, "level name") for n in index.names]}
    if isinstance(index, (pd.PeriodIndex, pd.IntervalIndex)):
        raise libcheck.unsupported(type_name, f"{type(index).__name__} has no plain form")
    if index.dtype == object and not all(type(label) is str for label in index):
        return {"kind": "labels", "name": _label(index.name, type_name, "index name"),
                "items": [_label(label, type_name, "label") for label in index]}
    return {"kind": "values", "values": encode_array(index.array, type_name, "index"),
            "name": _label(index.name, type_name, "index name"),
            "freq": getattr(index, "freqstr", None)}


def encode_series(series: Any) -> dict:
    kind = _type_name(series)
    return {"values": encode_array(series.array, kind, "values"),
            "index": encode_index(series.index, kind),
            "name": _label(series.name, kind, "name")}


def encode_frame(frame: Any) -> dict:
    kind = _type_name(frame)
    columns = [encode_array(frame.iloc[:, i].array, kind, f"column {label!r}")
               for i, label in enumerate(frame.columns)]
    return {"columns": encode_index(frame.columns, kind),
            "index": encode_index(frame.index, kind), "data": columns}


def encode_categorical(values: Any) -> dict:
    return encode_array(values, _type_name(values), "values")


# ------------------------------------------------------------------------ decode


def _decode_range(tag: str, plain: dict) -> Any:
    import pandas as pd

    spec = {"kind": str, "start": int, "stop": int, "step": int, "name": object}
    libcheck.record(tag, plain, spec)
    if plain["step"] == 0:
        raise libcheck.refuse(tag, "a RangeIndex step of 0")
    return libcheck.build(tag, "RangeIndex", pd.RangeIndex, plain["start"], plain["stop"],
                          plain["step"], name=_check_label(tag, plain["name"], "index name"))


def _decode_multi(tag: str, plain: dict) -> Any:
    import pandas as pd

    libcheck.record(tag, plain, {"kind": str, "levels": (list, tuple), "codes": (list, tuple),
                                 "names": (list, tuple)})
    levels = [decode_index(tag, level, nested=True) for level in plain["levels"]]
    codes = libcheck.sequence(tag, plain["codes"], "level codes", length=len(levels))
    names = libcheck.sequence(tag, plain["names"], "level names", length=len(levels))
    for i, level in enumerate(levels):
        codes[i] = libcheck.array(tag, codes[i], f"codes[{i}]", ndim=1,
                                  dtypes=(np.dtype(np.int8), np.dtype(np.int16),
                                          np.dtype(np.int32), np.dtype(np.int64)))
        if len(codes[i]) != len(codes[0]):
            raise libcheck.refuse(tag, "MultiIndex levels have codes of different lengths")
        libcheck.within(tag, codes[i], -1, len(level), f"codes[{i}]")
        _check_label(tag, names[i], "level name")
    return libcheck.build(tag, "MultiIndex", pd.MultiIndex, levels=levels, codes=codes,
                          names=names, verify_integrity=True)


def _decode_values(tag: str, plain: dict) -> Any:
    import pandas as pd

    spec = {"kind": str, "values": dict, "name": object, "freq": (str, type(None))}
    libcheck.record(tag, plain, spec)
    values = decode_array(tag, plain["values"])
    name, freq = _check_label(tag, plain["name"], "index name"), plain["freq"]
    if freq is None:
        return as_index(tag, values, name)
    if len(freq) > MAX_FREQ or values.dtype.kind not in "mM":
        raise libcheck.refuse(tag, "a freq belongs to a datetime or timedelta index")
    make = pd.TimedeltaIndex if values.dtype.kind == "m" else pd.DatetimeIndex
    return libcheck.build(tag, "index with freq", make, values, freq=freq, name=name)


def _decode_labels(tag: str, plain: dict) -> Any:
    """An object Index of mixed labels (e.g. str and int column names)."""
    import pandas as pd

    libcheck.record(tag, plain, {"kind": str, "name": object, "items": (list, tuple)})
    values = np.empty(len(plain["items"]), dtype=object)
    for i, label in enumerate(plain["items"]):
        values[i] = _check_label(tag, label, "label")  # one by one: tuples stay items
    return libcheck.build(tag, "index", pd.Index, values, dtype=object, copy=False,
                          name=_check_label(tag, plain["name"], "index name"),
                          tupleize_cols=False)


def decode_index(tag: str, plain: Any, nested: bool = False) -> Any:
    """Rebuild an Index. A MultiIndex level (`nested`) may be neither a MultiIndex nor a
    range: pandas expands its levels, so a level's size must be that of received data."""
    if type(plain) is not dict or type(plain.get("kind")) is not str:
        raise libcheck.refuse(tag, "an index must be a dict naming its kind")
    kinds = ("values", "labels") if nested else ("range", "multi", "values", "labels")
    kind = libcheck.choice(tag, plain["kind"], kinds, "index kind")
    return {"range": _decode_range, "multi": _decode_multi, "values": _decode_values,
            "labels": _decode_labels}[kind](tag, plain)


def decode_series(plain: Any, options: CodecOptions) -> Any:
    import pandas as pd

    spec = {"values": dict, "index": dict, "name": object}
    libcheck.record(SERIES, plain, spec)
    values = decode_array(SERIES, plain["values"])
    index = decode_index(SERIES, plain["index"])
    if len(values) != len(index):
        raise libcheck.refuse(SERIES, f"{len(values)} values for an index of {len(index)}")
    name = _check_label(SERIES, plain["name"], "name")
    return libcheck.build(SERIES, "Series", pd.Series, values, index=index, name=name,
                          copy=False)


def decode_frame(plain: Any, options: CodecOptions) -> Any:
    import pandas as pd

    libcheck.record(FRAME, plain, {"columns": dict, "index": dict, "data": (list, tuple)})
    columns = decode_index(FRAME, plain["columns"])
    index = decode_index(FRAME, plain["index"])
    data = libcheck.sequence(FRAME, plain["data"], "columns", length=len(columns))
    arrays = {}
    for i, column in enumerate(data):
        arrays[i] = decode_array(FRAME, column)
        if len(arrays[i]) != len(index):
            raise libcheck.refuse(FRAME, f"column {i} has {len(arrays[i])} rows, the index "
                                         f"{len(index)}")
    frame = libcheck.build(FRAME, "DataFrame", pd.DataFrame, arrays, index=index, copy=False)
    frame.columns = columns  # lengths checked above; labels may repeat
    return frame


def decode_index_value(plain: Any, options: CodecOptions) -> Any:
    return decode_index(INDEX, plain)


def decode_categorical(plain: Any, options: CodecOptions) -> Any:
    import pandas as pd

    values = decode_array(CATEGORICAL, plain)
    if not isinstance(values, pd.Categorical):
        raise libcheck.refuse(CATEGORICAL, "the values are not categorical")
    return values


CODECS: tuple[LibraryCodec, ...] = (
    LibraryCodec(FRAME, "pandas", ("pandas.DataFrame", "pandas.core.frame.DataFrame"),
                 encode_frame, decode_frame),
    LibraryCodec(SERIES, "pandas", ("pandas.Series", "pandas.core.series.Series"),
                 encode_series, decode_series),
    LibraryCodec(INDEX, "pandas", (
        "pandas.Index", "pandas.RangeIndex", "pandas.MultiIndex", "pandas.DatetimeIndex",
        "pandas.TimedeltaIndex", "pandas.CategoricalIndex",
        "pandas.core.indexes.base.Index", "pandas.core.indexes.range.RangeIndex",
        "pandas.core.indexes.multi.MultiIndex", "pandas.core.indexes.datetimes.DatetimeIndex",
        "pandas.core.indexes.timedeltas.TimedeltaIndex",
        "pandas.core.indexes.category.CategoricalIndex"), encode_index, decode_index_value),
    LibraryCodec(CATEGORICAL, "pandas", ("pandas.Categorical",
                                         "pandas.core.arrays.categorical.Categorical"),
                 encode_categorical, decode_categorical),
)
