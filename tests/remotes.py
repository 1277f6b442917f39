"""fed.remote functions that several multi-party test modules use.

Defined once, so each test module's party processes (and their Ray workers, which
import functions by module name) run the same code.
"""
from __future__ import annotations

import fed


@fed.remote
def produce(x):
    return x


@fed.remote
def add(a, b):
    return a + b
