"""The exceptions users catch.

Every error raised by rayfed derives from :class:`FedError`. Errors that cross a
party boundary (they travel inside the channel and through Ray tasks) keep all
their fields through pickling, so a consumer sees the same object the producer
described.
"""
from __future__ import annotations

import pickle
import traceback
from typing import Any


class FedError(Exception):
    """Base class of every rayfed error."""

    #: The attributes that travel with the error (and the only ones a peer may set).
    _fields: tuple[str, ...] = ()
    #: Whether the message may quote user data or user code's messages; such a message
    #: reaches peers only with expose_error_trace.
    quotes_user_data: bool = False

    def __reduce__(self):
        # Ray may raise a class derived from both its RayTaskError and ours; such a
        # class cannot be pickled by name, so rebuild the nearest rayfed class instead.
        cls = next(c for c in type(self).__mro__ if c.__module__ == __name__)
        state = {k: v for k, v in self.__dict__.items() if k in _fields_of(cls)}
        return (_rebuild_error, (cls, self.args, state))


def _fields_of(cls: type) -> tuple[str, ...]:
    return getattr(cls, "_fields", ())


def _rebuild_error(cls: Any, args: Any, state: Any) -> FedError:
    """Unpickle a rayfed error. It may come from another party, so it rebuilds only
    rayfed errors, with a tuple of args and only the fields that class declares."""
    if not (isinstance(cls, type) and issubclass(cls, FedError)):
        raise pickle.UnpicklingError(f"_rebuild_error: {cls!r} is not a rayfed error class")
    if type(args) is not tuple or type(state) is not dict:
        raise pickle.UnpicklingError("_rebuild_error: args must be a tuple, state a dict")
    unknown = set(state) - set(_fields_of(cls))
    if unknown:
        raise pickle.UnpicklingError(
            f"_rebuild_error: {cls.__name__} has no field(s) {sorted(map(str, unknown))}"
        )
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

    _fields = ("src_party", "call", "cause_type", "message", "remote_traceback")

    def __init__(
        self,
        src_party: str,
        call: str,
        cause_type: str,
        message: str | None = None,
        remote_traceback: str | None = None,
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

    _fields = ("peer", "detail")

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

    _fields = ("reason", "detail")

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

    quotes_user_data = True  # the policy's own exception text


class FedSerializationError(FedError):
    """A value could not be serialized or deserialized for crossing parties."""

    quotes_user_data = True  # the pickler's message about a user value


class FedDeserializationRefused(FedSerializationError, pickle.UnpicklingError):
    """The receiver's allowlist does not admit a type found in a message.

    Also a ``pickle.UnpicklingError`` whose text names ``_pickle.UnpicklingError``,
    as RayFed raised it, so code written for RayFed catches or matches it unchanged.
    """

    _fields = ("type_name", "hint")

    def __init__(self, type_name: str, hint: str) -> None:
        self.type_name = type_name
        self.hint = hint
        super().__init__(
            f"refusing to deserialize {type_name!r} from another party "
            f"(_pickle.UnpicklingError: global '{type_name}' is forbidden). {hint}"
        )


def remote_error_from(exc: BaseException, party: str, call: str, expose: bool) -> FedRemoteError:
    """Describe a failed call for the parties that wait on its output.

    A failure that is itself a `FedRemoteError` (the call failed because its input
    failed elsewhere) is passed on unchanged, so every party names the original source.
    """
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, FedRemoteError):
        return cause
    cause_type = f"{type(cause).__module__}.{type(cause).__qualname__}"
    if isinstance(cause, FedError) and (expose or not cause.quotes_user_data):
        # rayfed's own messages describe the channel (parties, calls, limits).
        return FedRemoteError(party, call, cause_type, str(cause))
    if not expose:
        return FedRemoteError(party, call, cause_type)
    # Ray keeps the task's own stack as text; the unpickled cause has lost its frames.
    tb = getattr(exc, "traceback_str", None) or "".join(traceback.format_exception(cause))
    return FedRemoteError(party, call, cause_type, str(cause), tb)


def error_from_wire(value: object, src: str, call: str) -> FedError:
    """The error to raise for a failure value a peer sent (an "error" envelope).

    A peer may only send rayfed errors. Anything else, above all ``SystemExit`` or
    ``KeyboardInterrupt``, which would kill the thread that raises it, is replaced
    by a FedRemoteError naming what was sent.
    """
    if isinstance(value, FedError):
        return value
    sent = type(value)
    return FedRemoteError(
        src, call, f"invalid error envelope: {sent.__module__}.{sent.__qualname__}",
        "a peer may send only rayfed errors (fed.errors) as a call's failure",
    )
