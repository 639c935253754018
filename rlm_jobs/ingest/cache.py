"""Converted documents on local disk, keyed by the file's content hash.

One JSON file per (converter stamp, format, SHA-256 of the bytes): a rerun over the same
files reads them back instead of converting again, a renamed or copied file hits too, and a
new converter (our version or a library's) writes beside the old entries instead of
serving stale text. Entries are written whole (temporary file, then rename), so a reader
never sees half of one; an unreadable entry is converted again and replaced. Nothing is
evicted: delete the directory to reclaim the space.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rlm_jobs.ingest.base import Converted
from rlm_jobs.ingest.formats import Format

log = logging.getLogger(__name__)


class IngestCache:
    def __init__(self, directory: Path, stamp: str) -> None:
        self.directory = directory
        self._stamp = stamp
        self._warned = False

    def path(self, fmt: Format, sha256: str) -> Path:
        return self.directory / f"{fmt.value}-{self._stamp}" / sha256[:2] / f"{sha256}.json"

    def get(self, fmt: Format, sha256: str) -> Converted | None:
        path = self.path(fmt, sha256)
        try:
            entry: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable ingest cache entry %s: %s", path, exc)
            return None
        if (
            not isinstance(entry, dict)
            or entry.get("format") != fmt.value
            or not isinstance(entry.get("detail"), str)
            or not isinstance(entry.get("context"), str | list | dict)
        ):
            log.warning("ignoring malformed ingest cache entry %s", path)
            return None
        return Converted(entry["context"], fmt, entry["detail"])

    def put(self, sha256: str, converted: Converted) -> None:
        path = self.path(converted.format, sha256)
        entry = {
            "format": converted.format.value,
            "detail": converted.detail,
            "context": converted.context,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".entry.", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(entry, out, ensure_ascii=False)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A cache that cannot be written costs a conversion next time, nothing more.
            if not self._warned:
                log.warning("cannot write the ingest cache under %s: %s", self.directory, exc)
                self._warned = True
