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


def configure(level: str) -> None:
    """Set the level of the `fed` logger only; add a stderr handler to it only when
    the application configured no logging of its own (so records are not printed twice)."""
    logger = logging.getLogger(LOGGER_NAME)
    try:
        logger.setLevel(level.upper())
    except (ValueError, AttributeError):
        from fed.errors import FedConfigError

        raise FedConfigError(
            f"logging_level must be one of debug, info, warning, error, critical; got {level!r}"
        ) from None
    ours = [h for h in logger.handlers if getattr(h, "_fed_handler", False)]
    if not logging.getLogger().handlers and not ours:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._fed_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


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
