"""A folder a camera drops images into: each new image is one request, its id the file name.

The folder is listed every ``interval_s`` in a worker thread (no inotify: it works the same on
every file system, network mounts included, and the interval bounds the wait). A file is taken
once it has stopped changing (the same size and modification time at two listings, so a camera
still writing it is left alone); hidden files (``.*``: a camera's temporary names) and other
extensions are passed over. An answered file moves to ``.done/``, one that does not decode to
``.failed/``, so nothing is answered twice, across restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitnn.data import DatasetError
from splitnn.datasets.images import IMAGE_SUFFIXES, decode_image

log = logging.getLogger(__name__)

DONE = ".done"
FAILED = ".failed"


@dataclass(frozen=True, slots=True)
class DroppedFile:
    """One image taken from the folder: its sample, or why it has none."""

    path: Path
    sample: np.ndarray | None
    problem: str | None = None

    @property
    def request_id(self) -> str:
        return self.path.name


class FolderWatch:
    def __init__(self, folder: Path, input_shape: tuple[int, ...], interval_s: float) -> None:
        self.folder = folder
        self.input_shape = input_shape
        self.interval_s = interval_s
        self._last: dict[str, tuple[int, int]] = {}  # name: (size, mtime) at the last listing
        self._taken: set[str] = set()  # handed out, not yet moved away

    async def files(self) -> AsyncIterator[DroppedFile]:
        """Every image dropped into the folder, once each, decoded, until cancelled."""
        await asyncio.to_thread(self._prepare)
        while True:
            for path in await asyncio.to_thread(self._settled):
                self._taken.add(path.name)
                yield await asyncio.to_thread(self._read, path)
            await asyncio.sleep(self.interval_s)

    async def finish(self, dropped: DroppedFile) -> None:
        """The file is answered: move it to ``.done/`` (``.failed/`` if it did not decode)."""
        where = FAILED if dropped.sample is None else DONE
        name = dropped.path.name
        try:
            await asyncio.to_thread(os.replace, dropped.path, self.folder / where / name)
        except OSError as exc:
            # Gone already, or a read-only folder: it stays taken, so it is not answered again.
            log.warning("could not move %s to %s/: %s", dropped.path, where, exc)
            return
        self._taken.discard(name)
        self._last.pop(name, None)

    def _prepare(self) -> None:
        for name in (DONE, FAILED):
            (self.folder / name).mkdir(parents=True, exist_ok=True)

    def _settled(self) -> list[Path]:
        """Images whose size and modification time did not change since the last listing."""
        now: dict[str, tuple[int, int]] = {}
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                with contextlib.suppress(OSError):  # removed while we look
                    if entry.is_file():
                        stat = entry.stat()
                        now[name] = (stat.st_size, stat.st_mtime_ns)
        ready = sorted(
            name
            for name, seen in now.items()
            if self._last.get(name) == seen and name not in self._taken
        )
        self._last = now
        return [self.folder / name for name in ready]

    def _read(self, path: Path) -> DroppedFile:
        try:
            return DroppedFile(path, decode_image(path, self.input_shape))
        except DatasetError as exc:
            return DroppedFile(path, None, str(exc))
