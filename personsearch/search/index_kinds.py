"""The FAISS index kinds a gallery index can be searched through: the one table of their names.

Kept apart from `personsearch.search.faiss_backends` (which builds them) so that the command
line can offer the kinds in --help without importing numpy or faiss.
"""

from __future__ import annotations

from typing import Literal

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
#: "flat" is exact (the default); "hnsw", "ivf" and "ivfpq" are approximate, for large galleries.
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
