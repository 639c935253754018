"""Reading real documents: PDF, DOCX, HTML, Markdown, text in any common encoding, CSV/TSV,
JSON and JSON lines, each into a context the root model can work on.

``Ingestor.convert_file(path)`` returns a ``Converted`` (the context and facts about it) or
raises ``DocumentError``; ``describe`` turns those facts into the sentence the model reads.
Documents built from files (batches, corpora) are made in ``rlm_jobs.batchfiles``.
"""

from rlm_jobs.ingest.base import Converted, Converter
from rlm_jobs.ingest.cache import IngestCache
from rlm_jobs.ingest.formats import Format, detect
from rlm_jobs.ingest.ingestor import CONVERTERS, Ingestor, converter_stamp, describe

__all__ = [
    "CONVERTERS",
    "Converted",
    "Converter",
    "Format",
    "IngestCache",
    "Ingestor",
    "converter_stamp",
    "describe",
    "detect",
]
