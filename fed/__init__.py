"""rayfed: run one driver script across parties, each with its own Ray cluster.

Public names only; see docs/architecture.md for how the pieces fit.
"""
from fed.api import get, init, kill, register_codec, shutdown, stats
from fed.errors import (
    FedConfigError,
    FedDeserializationRefused,
    FedDivergenceError,
    FedEgressDenied,
    FedError,
    FedIdentityError,
    FedLimitError,
    FedPeerUnavailableError,
    FedRefusedError,
    FedRemoteError,
    FedSerializationError,
    FedTimeoutError,
    FedTransportError,
)
from fed.object import FedObject
from fed.remote import remote

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "remote", "get", "kill", "stats", "register_codec", "FedObject",
    "FedError", "FedConfigError", "FedRemoteError", "FedDivergenceError",
    "FedPeerUnavailableError", "FedTransportError", "FedRefusedError",
    "FedSerializationError", "FedDeserializationRefused",
    "FedIdentityError", "FedLimitError", "FedEgressDenied", "FedTimeoutError",
]
