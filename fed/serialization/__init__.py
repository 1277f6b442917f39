"""How values cross a party boundary: bytes out, and safely back in.

A value is pickled once with protocol 5 and out-of-band buffers, so numpy arrays
are not copied into the pickle: :func:`dumps` returns the (small) pickle bytes and
the raw array memory as byte views, which the transport streams as they are.

The receiving side must not trust its peer. :func:`loads` checks, in order:

1. the opcode stream (:func:`_scan_opcodes`): framing, lengths that fit the
   data, memo indices that cannot make CPython's C unpickler allocate gigabytes;
2. every global the pickle names (a class, a reconstructor function) against an
   :class:`Allowlist`, before importing anything. The default admits plain data
   only (builtin containers, scalars and exceptions, ``collections``,
   ``datetime``, ``decimal``, ``fractions``, numpy arrays/dtypes/scalars, and
   rayfed's own errors). Users add their types with
   ``cross_silo_comm.serializing_allowed_list`` in ``fed.init``; allowing
   everything is possible but must be spelled out (``"*"``);
3. what the pickle does with admitted globals, when it could matter: pickles
   that apply states (BUILD) or name numpy's array constructors go through a
   pure-Python unpickler (:class:`_GuardedUnpickler`) that refuses
   monkeypatching a global and validates numpy states, which numpy itself does
   not (forged ones segfault it). Everything else uses the fast C unpickler.

What remains possible for a hostile peer is resource use proportional to what
admitted constructors allow (e.g. ``bytearray(10**9)``); message size limits
belong to the transport.
"""
from __future__ import annotations

from fed.serialization.allowlist import CONFIG_KEY, Allowlist, default_allowlist
from fed.serialization.opscan import _scan_opcodes
from fed.serialization.pickling import PICKLE_PROTOCOL, dumps
from fed.serialization.unpickling import loads

__all__ = [
    "CONFIG_KEY",
    "PICKLE_PROTOCOL",
    "Allowlist",
    "_scan_opcodes",
    "default_allowlist",
    "dumps",
    "loads",
]
