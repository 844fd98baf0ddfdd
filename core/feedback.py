"""One feedback protocol for core's long operations: progress, cancellation and log.

Core functions take three optional callables, ``progress`` (a percentage, 0..100),
``is_cancelled`` (checked between batches; True stops the work with
:class:`core.errors.Cancelled` and leaves no output) and ``log`` (a line of text).
:func:`callbacks` makes them from any :class:`Feedback`, which a QGIS
``QgsProcessingFeedback`` is.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

#: reports progress in percent (0..100)
Progress = Callable[[float], None]
#: True when the user asked to stop
IsCancelled = Callable[[], bool]
#: takes one line of log text
Log = Callable[[str], None]


def ignore(*_args: Any) -> None:
    """A progress or log callback that does nothing."""
    return None


def never() -> bool:
    """An ``is_cancelled`` that never cancels."""
    return False


@runtime_checkable
class Feedback(Protocol):
    """What core needs of a feedback object (a ``QgsProcessingFeedback`` has all three)."""

    def setProgress(self, progress: float) -> None: ...  # noqa: N802 (QGIS API name)

    def isCanceled(self) -> bool: ...  # noqa: N802 (QGIS API name)

    def pushInfo(self, info: str) -> None: ...  # noqa: N802 (QGIS API name)


def callbacks(feedback: Feedback | None) -> dict[str, Callable[..., Any]]:
    """``progress``, ``is_cancelled`` and ``log`` of ``feedback`` (no-ops for None), as keyword
    arguments for core's long functions."""
    if feedback is None:
        return {"progress": ignore, "is_cancelled": never, "log": ignore}
    return {"progress": feedback.setProgress, "is_cancelled": feedback.isCanceled, "log": log_to(feedback)}


#: core messages that start with this are warnings (shown as such where the feedback can)
WARNING_PREFIX = "WARNING: "


def log_to(feedback: Feedback) -> Callable[[str], None]:
    """``feedback.pushInfo``, except that messages starting with :data:`WARNING_PREFIX` go to
    ``feedback.pushWarning`` when it has one (QGIS shows them highlighted)."""
    warn = getattr(feedback, "pushWarning", None)
    if warn is None:
        return feedback.pushInfo

    def log(message: str) -> None:
        if message.startswith(WARNING_PREFIX):
            warn(message[len(WARNING_PREFIX):])  # QGIS marks it a warning itself
        else:
            feedback.pushInfo(message)

    return log
