"""The opt-in pickle path: ``cross_silo_comm.serializing_allowed_list``.

rayfed's default wire format is the typed codec (fed/codec), which has no pickle
at all. A party that configures ``serializing_allowed_list`` lets the parts of a
value whose class the list admits cross as pickles (fed/transport/payload.py);
this package pickles them and, on the receiving side, unpickles them safely:

1. the opcode stream is scanned first (opscan.py): framing, lengths that fit the
   data, memo indices that cannot make CPython's C unpickler allocate gigabytes;
2. every global a pickle names is checked against the :class:`Allowlist`
   (allowlist.py) *before* its module is imported; the defaults admit plain data
   (builtin containers, scalars and exceptions, ``collections``, ``datetime``,
   ``decimal``, numpy arrays/dtypes/scalars, rayfed's errors); wildcards admit classes
   only; ``"*"`` trusts the peer completely;
3. what a pickle does with admitted globals is checked where it could matter
   (unpickling.py, numpy_guard.py): one call check for REDUCE, INST and OBJ (numpy
   constructors only in numpy's own patterns, no size-taking constructor called with
   a size), no state on builtin containers, no state that sets a special or method
   name, no BUILD on a global, numpy states validated before numpy sees them.

A value held until its barrier claims it is vetted without being built
(globalscan.py: the globals it names, against the allowlist).

The text of a refusal, naming the config that admits a type, is in hints.py.
"""
from __future__ import annotations

from fed.serialization.allowlist import CONFIG_KEY, Allowlist, default_allowlist
from fed.serialization.globalscan import check
from fed.serialization.opscan import _scan_opcodes
from fed.serialization.pickling import PICKLE_PROTOCOL, dumps
from fed.serialization.unpickling import loads

__all__ = [
    "CONFIG_KEY",
    "PICKLE_PROTOCOL",
    "Allowlist",
    "_scan_opcodes",
    "check",
    "default_allowlist",
    "dumps",
    "loads",
]
