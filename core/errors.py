"""Typed errors raised by the core. The Processing algorithms turn them into
``QgsProcessingException`` with the same message."""


class GlassboxError(Exception):
    """Base class of every error the core raises on purpose."""


class ModelCardError(GlassboxError):
    """The model has no card, or its card lacks or misstates a field."""


class UnsafeModelError(GlassboxError):
    """A model file would run arbitrary code when loaded (a pickled object), so it is refused."""


class ModelLoadError(GlassboxError):
    """A model file cannot be read or run by the chosen backend."""


class RasterInputError(GlassboxError):
    """The input raster, band selection, extent or mask cannot be used."""


class OutputError(GlassboxError):
    """An output cannot be written."""


class Cancelled(GlassboxError):
    """The user cancelled the run; nothing was written."""


class TrainingDataError(GlassboxError):
    """Labelled tiles (a tile folder, or a raster with labelled polygons) cannot be used for
    training or evaluation: unreadable, inconsistent, too few, or not matching the model."""
