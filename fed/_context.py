"""The one per-process context: who we are, the job, the call counter, the channel.

`fed.init` creates it, `fed.shutdown` clears it; nothing else in the package keeps
mutable module state.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fed._failure import SendFailurePolicy
from fed.codec import UserCodec, UserCodecs
from fed.config import FedConfig
from fed.errors import FedNotInitializedError
from fed.transport.base import Transport


@dataclass
class FedContext:
    config: FedConfig
    transport: Transport
    log: logging.LoggerAdapter
    started_ray: bool = False
    sending_failure_handler: Callable[[Exception], None] | None = None
    send_failures: SendFailurePolicy | None = None
    # A token per fed.init: FedObjects carry it, so one from an earlier job is refused.
    generation: object = field(default_factory=object)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _channel: dict = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def party(self) -> str:
        return self.config.party

    @property
    def job_name(self) -> str:
        return self.config.job_name

    @property
    def simulation(self) -> bool:
        return self.config.mode == "simulation"

    def executes(self, party: str) -> bool:
        """Whether this process runs calls pinned to `party` (all of them in simulation)."""
        return self.simulation or party == self.config.party

    def next_seq_id(self) -> int:
        """The next call's sequence id; every party draws them in the same order."""
        with self._lock:
            return next(self._seq)

    def next_ordinal(self, src: str, dst: str) -> int:
        """The next message number on the (src, dst) channel (no number twice, even
        when several threads send at once)."""
        with self._lock:
            n = self._channel[(src, dst)]
            self._channel[(src, dst)] = n + 1
            return n

    def made_once(self, holder: Any, attr: str, make: Callable[[], Any]) -> Any:
        """``holder.attr``, set to ``make()`` the first time, once even when several
        threads ask at the same moment (e.g. a decorated function's Ray wrapper)."""
        value = getattr(holder, attr)
        if value is None:
            with self._lock:
                value = getattr(holder, attr)
                if value is None:
                    value = make()
                    setattr(holder, attr, value)
        return value


_current: FedContext | None = None


class _Registrations:
    """This process's user codecs (fed.register_codec). They outlive fed.shutdown, like
    the classes they serve: a script registers at import, before or after fed.init."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codecs = UserCodecs()

    def codecs(self) -> UserCodecs:
        return self._codecs

    def add(self, codec: UserCodec) -> UserCodecs:
        with self._lock:
            self._codecs = self._codecs.with_codec(codec)
            return self._codecs


_registrations = _Registrations()


def user_codecs() -> UserCodecs:
    """The user codecs registered in this process so far (an immutable snapshot)."""
    return _registrations.codecs()


def add_user_codec(codec: UserCodec) -> UserCodecs:
    """Register `codec`; return the new snapshot."""
    return _registrations.add(codec)


def get() -> FedContext:
    if _current is None:
        raise FedNotInitializedError(
            "rayfed is not initialized in this process: call fed.init(...) first"
        )
    return _current


def peek() -> FedContext | None:
    return _current


def set_current(ctx: FedContext | None) -> None:
    global _current
    _current = ctx
