"""The `fed` logger: party and job in every record, the user's logging untouched."""
from __future__ import annotations

import logging

LOGGER_NAME = "fed"
_FORMAT = "%(asctime)s %(levelname)s fed %(message)s"


def party_logger(party: str, job: str) -> logging.LoggerAdapter:
    """A logger whose records start with ``[party/job]``, for drivers and proxy actors."""
    return _PartyAdapter(logging.getLogger(LOGGER_NAME), {"party": party, "job": job})


class _PartyAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[{self.extra['party']}/{self.extra['job']}] {msg}", kwargs


class _FallbackHandler(logging.StreamHandler):
    """Prints `fed` records to stderr only while the application has configured no
    logging of its own (no handler on the root logger, none of its own on `fed`).

    `fed` records always propagate: once the application calls
    ``logging.basicConfig`` or adds a handler, its handlers get them and this one
    falls silent, so nothing is printed twice and nothing is taken over.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().handlers:
            return False
        owner = logging.getLogger(LOGGER_NAME)
        if any(not isinstance(h, (logging.NullHandler, _FallbackHandler)) for h in owner.handlers):
            return False
        return super().filter(record)


def configure(level: str) -> None:
    """Set the level of the `fed` logger only, and make its records visible while the
    application has configured no logging (see :class:`_FallbackHandler`)."""
    logger = logging.getLogger(LOGGER_NAME)
    try:
        logger.setLevel(level.upper())
    except (ValueError, AttributeError):
        from fed.errors import FedConfigError

        raise FedConfigError(
            f"logging_level must be one of debug, info, warning, error, critical; got {level!r}"
        ) from None
    if not any(isinstance(h, _FallbackHandler) for h in logger.handlers):
        handler = _FallbackHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)


def configure_unconfigured(level: str = "warning") -> None:
    """For a process fed.init did not set up (a proxy actor's worker): make warnings
    visible (Ray forwards worker stderr to the driver) without overriding a level or
    handlers that the driver or the application already chose."""
    logger = logging.getLogger(LOGGER_NAME)
    chosen = logger.level != logging.NOTSET or logging.getLogger().handlers or any(
        not isinstance(h, logging.NullHandler) for h in logger.handlers
    )
    if not chosen:
        configure(level)
