"""The exceptions users catch.

Every error raised by rayfed derives from :class:`FedError`. Errors that cross a
party boundary (they travel inside the channel and through Ray tasks) keep all
their fields through pickling, so a consumer sees the same object the producer
described.
"""
from __future__ import annotations

import traceback
from typing import Optional


class FedError(Exception):
    """Base class of every rayfed error."""

    def __reduce__(self):
        # Ray may raise a class derived from both its RayTaskError and ours; such a
        # class cannot be pickled by name, so rebuild the nearest rayfed class instead.
        cls = next(c for c in type(self).__mro__ if c.__module__ == __name__)
        state = {k: v for k, v in self.__dict__.items() if k in _fields_of(cls)}
        return (_rebuild_error, (cls, self.args, state))


def _fields_of(cls: type) -> tuple[str, ...]:
    return ("src_party", "call", "cause_type", "message", "remote_traceback", "peer",
            "detail", "reason", "type_name", "hint")


def _rebuild_error(cls, args, state):
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class FedConfigError(FedError, ValueError):
    """`fed.init` (or a call) received configuration it cannot use."""


class FedNotInitializedError(FedError, RuntimeError):
    """An API call needs `fed.init` first."""


class FedRemoteError(FedError):
    """A task or actor method failed in another party.

    ``src_party`` is the party where it failed, ``call`` names the failed call,
    ``cause_type`` is the qualified exception type. ``message`` and
    ``remote_traceback`` are present only when the owner party allowed it with
    ``cross_silo_comm.expose_error_trace``.
    """

    def __init__(
        self,
        src_party: str,
        call: str,
        cause_type: str,
        message: Optional[str] = None,
        remote_traceback: Optional[str] = None,
    ) -> None:
        self.src_party = src_party
        self.call = call
        self.cause_type = cause_type
        self.message = message
        self.remote_traceback = remote_traceback
        text = f"{call} failed in party {src_party!r} with {cause_type}"
        if message:
            text += f": {message}"
        else:
            text += " (details withheld: that party did not set cross_silo_comm.expose_error_trace)"
        if remote_traceback:
            text += f"\n--- traceback in party {src_party!r} ---\n{remote_traceback}"
        super().__init__(text)


class FedDivergenceError(FedError):
    """Two parties disagree on which call a message belongs to.

    Every party must run the same sequence of `.remote()` and `fed.get` calls; this
    error names what each side expected at the same position.
    """


class FedPeerUnavailableError(FedError, ConnectionError):
    """A peer party could not be reached (or stopped answering) in time."""

    def __init__(self, peer: str, detail: str) -> None:
        self.peer = peer
        self.detail = detail
        super().__init__(f"party {peer!r} is unavailable: {detail}")


class FedTransportError(FedError):
    """The cross-party channel failed to move a value."""


class FedTimeoutError(FedError, TimeoutError):
    """`fed.get(..., timeout=...)` ran out of time; the values may still come later."""


class FedRefusedError(FedTransportError):
    """The receiving party refused a message (wrong job, identity, limits...)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"message refused ({reason}): {detail}")


class FedIdentityError(FedRefusedError):
    """The other end is not the party it claims (or must be) per its TLS certificate."""


class FedLimitError(FedRefusedError):
    """A value or frame exceeds a limit the receiving party configured."""


#: REFUSE reasons and the error type a sender raises for each (others: FedRefusedError).
_REFUSAL_TYPES = {
    "identity": FedIdentityError,
    "spoofed_source": FedIdentityError,
    "unknown_party": FedIdentityError,
    "too_large": FedLimitError,
    "header_too_large": FedLimitError,
    "too_many_frames": FedLimitError,
}


def refused_error(reason: str, detail: str) -> FedRefusedError:
    """The typed error for a REFUSE frame, so callers can catch identity vs limit refusals."""
    return _REFUSAL_TYPES.get(reason, FedRefusedError)(reason, detail)


class FedEgressDenied(FedError):
    """This party's egress policy does not allow a value to leave for a destination."""


class FedSerializationError(FedError):
    """A value could not be serialized or deserialized for crossing parties."""


class FedDeserializationRefused(FedSerializationError):
    """The receiver's allowlist does not admit a type found in a message."""

    def __init__(self, type_name: str, hint: str) -> None:
        self.type_name = type_name
        self.hint = hint
        super().__init__(f"refusing to deserialize {type_name!r} from another party. {hint}")


def remote_error_from(exc: BaseException, party: str, call: str, expose: bool) -> FedRemoteError:
    """Describe a failed call for the parties that wait on its output.

    A failure that is itself a `FedRemoteError` (the call failed because its input
    failed elsewhere) is passed on unchanged, so every party names the original source.
    """
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, FedRemoteError):
        return cause
    cause_type = f"{type(cause).__module__}.{type(cause).__qualname__}"
    if isinstance(cause, FedError):
        # rayfed's own errors describe the channel (parties, calls), never user data.
        return FedRemoteError(party, call, cause_type, str(cause))
    if not expose:
        return FedRemoteError(party, call, cause_type)
    # Ray keeps the task's own stack as text; the unpickled cause has lost its frames.
    tb = getattr(exc, "traceback_str", None) or "".join(traceback.format_exception(cause))
    return FedRemoteError(party, call, cause_type, str(cause), tb)
