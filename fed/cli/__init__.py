"""The ``fed`` command line tool.

Kept free of heavy imports (no Ray, cryptography only when certificates are
actually made) so that ``fed --help`` and ``fed run`` start instantly.
Each subcommand lives in its own module exposing ``register(subparsers)``;
:mod:`fed.cli.main` assembles them.
"""
from __future__ import annotations


class UsageError(ValueError):
    """The user asked for something the CLI cannot do; reported on stderr, exit 2."""


#: Exit status for usage errors (same as argparse).
EXIT_USAGE = 2

__all__ = ["UsageError", "EXIT_USAGE"]
