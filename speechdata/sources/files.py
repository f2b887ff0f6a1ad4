"""Plain JSONL manifests: every clip is a file on disk, read by path."""

from __future__ import annotations

import numpy as np

from speechdata.manifest import Index, Record

__all__ = ["ManifestSource"]


class ManifestSource:
    """The examples of NeMo JSONL manifests (a :class:`~speechdata.sources.base.Source`): records
    are read back from their manifest line by byte offset (:meth:`Index.record`), and the decoder
    opens each clip's file itself."""

    seekable = True
    buckets: np.ndarray | None = None

    def __init__(self, index: Index) -> None:
        self.index = index

    def record(self, row: int) -> Record:
        """Row ``row``'s manifest line, keys resolved."""
        return self.index.record(row)

    def audio(self, rec: Record) -> list[str]:
        """The clips' file paths (resolved against the manifest's folder when indexed)."""
        return rec.audio
