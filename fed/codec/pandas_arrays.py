"""One-dimensional pandas arrays (a column, an index's values) as plain data.

Used by lib_pandas for DataFrame columns, Series values, Index values and the
categories of a Categorical. Each array crosses as a dict whose "kind" picks one of
a fixed set of builders on the receiver:

- "numpy": numeric, bool, naive datetime64 and timedelta64 values, one array (no copy
  on either side);
- "datetimetz": datetime64 with a time zone: the UTC instants as datetime64 plus the
  zone's name (or a fixed offset in seconds); pandas copies once when it localizes;
- "masked": the nullable Int*/UInt*/Float*/boolean dtypes: values and a missing mask
  (pandas offers no public view of them, so the sender copies once);
- "string": str values of an object column or of pandas' string dtypes, as UTF-8
  bytes plus int64 offsets and a missing mask (Python strings are copied both ways);
- "categorical": integer codes plus the categories as an array of another kind.

An object column holding anything but str is refused on the sender: only data that
has a plain form crosses.
"""
from __future__ import annotations

import datetime
import zoneinfo
from functools import cache
from typing import Any

import numpy as np

from fed.codec import libcheck

NUMPY_KINDS = "biufcmM"
MASKED = {
    "Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
    "UInt8": "uint8", "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64",
    "Float32": "float32", "Float64": "float64", "boolean": "bool",
}
#: String dtypes: "object" (numpy object array of str), "str" (pandas' default string
#: dtype, NaN for missing) and "string" (pd.NA for missing), in the receiver's default storage.
STRING_DTYPES = ("object", "str", "string")
CODE_DTYPES = tuple(np.dtype(t) for t in ("int8", "int16", "int32", "int64"))
MAX_ZONE_NAME = 64
KINDS = ("numpy", "datetimetz", "masked", "string", "categorical")


def encode_array(values: Any, type_name: str, what: str) -> dict:
    """A pandas array (ExtensionArray or numpy array) as a plain dict."""
    import pandas as pd

    if type(values) is pd.arrays.NumpyExtensionArray:  # not its subclass StringArray
        values = np.asarray(values)  # the array it wraps, not a copy
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in NUMPY_KINDS:
        return {"kind": "numpy", "data": np.asarray(values)}
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return _encode_strings(values, "object", type_name, what)
    if isinstance(dtype, pd.StringDtype):
        name = "str" if dtype.na_value is not pd.NA else "string"
        return _encode_strings(values.to_numpy(dtype=object, na_value=None), name, type_name, what)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return _encode_datetimetz(values, type_name, what)
    if isinstance(dtype, pd.CategoricalDtype):
        return {"kind": "categorical", "codes": np.asarray(values.codes),
                "categories": encode_array(values.categories.array, type_name, what),
                "ordered": bool(values.ordered)}
    if getattr(dtype, "name", None) in MASKED:
        data = values.to_numpy(dtype=MASKED[dtype.name], na_value=False if
                               dtype.name == "boolean" else 0)
        return {"kind": "masked", "dtype": dtype.name, "data": data,
                "mask": np.asarray(values.isna(), dtype=bool)}
    raise libcheck.unsupported(type_name, f"{what} has dtype {dtype}, which has no plain form "
                               "(supported: numeric, bool, datetime, timedelta, categorical, "
                               "string and the nullable Int/Float/boolean dtypes)")


def _encode_strings(values: np.ndarray, dtype: str, type_name: str, what: str) -> dict:
    parts, missing = [], np.zeros(len(values), dtype=bool)
    for i, item in enumerate(values):
        if isinstance(item, str):
            try:
                parts.append(item.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise libcheck.unsupported(type_name, f"{what}[{i}] is not valid text: {exc}")
        elif item is None and dtype != "object":
            missing[i] = True
            parts.append(b"")
        else:
            raise libcheck.unsupported(
                type_name, f"{what} has object dtype and holds a {type(item).__name__} at "
                f"position {i}; only str crosses in an object column (convert it, e.g. "
                ".astype('string') for text with missing values, or to a numeric dtype)")
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    data = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return {"kind": "string", "dtype": dtype, "data": data, "offsets": offsets,
            "missing": missing}


def _encode_datetimetz(values: Any, type_name: str, what: str) -> dict:

    dtype, zone = values.dtype, values.dtype.tz
    utc = values.asi8.view(f"M8[{dtype.unit}]")  # the UTC instants, no copy
    name = str(zone)
    if name in _zone_names():  # zoneinfo and pytz zones; rebuilt as zoneinfo
        return {"kind": "datetimetz", "data": utc, "tz": name}
    if isinstance(zone, datetime.timezone):
        seconds = zone.utcoffset(None).total_seconds()
        if seconds.is_integer():  # a fixed offset in whole seconds
            return {"kind": "datetimetz", "data": utc, "tz": int(seconds)}
    raise libcheck.unsupported(type_name, f"{what}: time zone {zone!r} is neither an IANA "
                               "zone (zoneinfo) nor a fixed offset of whole seconds")


def decode_array(tag: str, plain: Any, categorical: bool = True) -> Any:
    """Rebuild an array from a plain dict (a categorical's categories may not be one)."""
    if type(plain) is not dict or type(plain.get("kind")) is not str:
        raise libcheck.refuse(tag, "an array must be a dict naming its kind")
    kinds = KINDS if categorical else KINDS[:-1]
    kind = libcheck.choice(tag, plain["kind"], kinds, "array kind")
    if kind == "numpy":
        libcheck.record(tag, plain, {"kind": str, "data": np.ndarray})
        return libcheck.array(tag, plain["data"], "values", ndim=1, kinds=NUMPY_KINDS)
    return {"datetimetz": _decode_datetimetz, "masked": _decode_masked,
            "string": _decode_strings, "categorical": _decode_categorical}[kind](tag, plain)


def as_index(tag: str, values: Any, name: Any = None) -> Any:
    """An Index over decoded values that keeps their dtype (pandas would infer "str"
    for an object array of str)."""
    import pandas as pd

    return libcheck.build(tag, "index", pd.Index, values, dtype=values.dtype, name=name,
                          copy=False)


@cache
def _zone_names() -> frozenset[str]:
    """The time zone names a receiver accepts: the IANA database's keys, and UTC."""
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def _decode_datetimetz(tag: str, plain: dict) -> Any:
    import pandas as pd

    libcheck.record(tag, plain, {"kind": str, "data": np.ndarray, "tz": (str, int)})
    data = libcheck.array(tag, plain["data"], "values", ndim=1, kinds="M")
    unit, count = np.datetime_data(data.dtype)
    libcheck.choice(tag, unit if count == 1 else f"{count}{unit}", ("s", "ms", "us", "ns"),
                    "datetime unit")
    zone = plain["tz"]
    if type(zone) is int:
        if not -86400 < zone < 86400:
            raise libcheck.refuse(tag, f"time zone offset {zone} s is not within a day")
        zone = datetime.timezone(datetime.timedelta(seconds=zone))
    elif zone not in _zone_names():  # a name, never a path pandas would open
        raise libcheck.refuse(tag, f"unknown time zone {zone[:MAX_ZONE_NAME]!r}")
    dtype = libcheck.build(tag, "time zone", pd.DatetimeTZDtype, unit, tz=zone)
    return libcheck.build(tag, "datetimes", pd.array, data.view(np.int64), dtype=dtype)


def _decode_masked(tag: str, plain: dict) -> Any:
    import pandas as pd

    spec = {"kind": str, "dtype": str, "data": np.ndarray, "mask": np.ndarray}
    name = libcheck.choice(tag, libcheck.record(tag, plain, spec)["dtype"], MASKED, "dtype")
    data = libcheck.array(tag, plain["data"], "values", ndim=1, dtypes=(np.dtype(MASKED[name]),))
    mask = libcheck.array(tag, plain["mask"], "mask", ndim=1, dtypes=(np.dtype(bool),))
    if len(mask) != len(data):
        raise libcheck.refuse(tag, f"mask of {len(mask)} for {len(data)} values")
    make = (pd.arrays.BooleanArray if name == "boolean" else pd.arrays.FloatingArray
            if name.startswith("Float") else pd.arrays.IntegerArray)
    return libcheck.build(tag, name, make, data, mask)


def _decode_strings(tag: str, plain: dict) -> Any:
    import pandas as pd

    spec = {"kind": str, "dtype": str, "data": np.ndarray, "offsets": np.ndarray,
            "missing": np.ndarray}
    dtype = libcheck.choice(tag, libcheck.record(tag, plain, spec)["dtype"], STRING_DTYPES,
                            "string dtype")
    data = libcheck.array(tag, plain["data"], "text", ndim=1, dtypes=(np.dtype(np.uint8),))
    offsets = libcheck.array(tag, plain["offsets"], "offsets", ndim=1,
                             dtypes=(np.dtype(np.int64),))
    missing = libcheck.array(tag, plain["missing"], "missing", ndim=1, dtypes=(np.dtype(bool),))
    if len(offsets) != len(missing) + 1 or offsets[0] != 0 or offsets[-1] != len(data):
        raise libcheck.refuse(tag, "string offsets do not match the text and the count")
    libcheck.nondecreasing(tag, offsets, "string offsets")
    if dtype == "object" and missing.any():
        raise libcheck.refuse(tag, "an object column of str has no missing values")
    text, bounds = data.tobytes(), offsets.tolist()
    values = np.empty(len(missing), dtype=object)
    try:
        for i, absent in enumerate(missing.tolist()):
            values[i] = None if absent else text[bounds[i]:bounds[i + 1]].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise libcheck.refuse(tag, f"string {i} is not UTF-8: {exc}") from None
    if dtype == "object":
        return values
    na_value = np.nan if dtype == "str" else pd.NA
    return libcheck.build(tag, dtype, pd.array, values, dtype=pd.StringDtype(na_value=na_value))


def _decode_categorical(tag: str, plain: dict) -> Any:
    import pandas as pd

    spec = {"kind": str, "codes": np.ndarray, "categories": dict, "ordered": bool}
    libcheck.record(tag, plain, spec)
    codes = libcheck.array(tag, plain["codes"], "codes", ndim=1, dtypes=CODE_DTYPES)
    categories = decode_array(tag, plain["categories"], categorical=False)
    index = as_index(tag, categories)
    libcheck.within(tag, codes, -1, len(index), "categorical codes")
    dtype = libcheck.build(tag, "categories", pd.CategoricalDtype, index, plain["ordered"])
    return libcheck.build(tag, "categorical", pd.Categorical.from_codes, codes, dtype=dtype)
