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


class SegmentationError(GlassboxError):
    """Segmentation from seed points cannot run as asked: no usable seed point, an unknown
    method, or a Segment Anything model or checkpoint that is missing or does not fit."""


class ClassMappingError(TrainingDataError):
    """A class mapping (field values -> classes, e.g. LCDB codes -> class groups) cannot be read
    or maps none of the polygons."""


class MaskingError(GlassboxError):
    """Background masking cannot run as asked: an unknown mask type or fill, or masks that do
    not fit the tiles."""


class EnsembleError(GlassboxError):
    """Two models cannot be combined into one ensemble: their classes, bands, tile size, ground
    sample distance or scaling differ, an output is not logits, or alpha is outside 0..1."""
