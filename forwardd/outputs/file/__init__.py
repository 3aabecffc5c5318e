"""The file output: :mod:`.output` (the output), :mod:`.paths` (path templates under a root),
:mod:`.segments` (segment files, rotation, compression, the symlink), :mod:`.settings` (its configuration)."""

from forwardd.outputs.file.output import FileOutput, FileStats
from forwardd.outputs.file.paths import MISSING, NAME_MAX, PathTemplate, sanitise_component
from forwardd.outputs.file.settings import FileSettings

__all__ = [
    "MISSING",
    "NAME_MAX",
    "FileOutput",
    "FileSettings",
    "FileStats",
    "PathTemplate",
    "sanitise_component",
]
