"""Helpers shared by the dataset modules: the data folder, MD5 sums, failed downloads, error-message text."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import urllib.error
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError

__all__ = ["Built", "data_dir", "first_line", "md5_ok", "downloading"]

Built = tuple[Dataset | None, Dataset, int]  # what a dataset builder returns: (train or None, val, classes found)

# What urllib raises when there is no network (or the server fails): refused, unreachable, timed out, cut off.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)
_DOWNLOAD_TIMEOUT_S = 30  # per connect / read: an unreachable host fails in seconds, not after TCP's minutes


def data_dir(cfg: Mapping[str, Any]) -> Path:
    value = cfg.get("data_dir")
    if not value:
        raise ConfigError(f"data_dir is not set for dataset {cfg.get('dataset')!r}: set data_dir: <folder>")
    return Path(os.path.expanduser(str(value)))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def md5_ok(path: Path, md5: str) -> bool:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == md5


@contextlib.contextmanager
def downloading(what: str, url: str, fix: str) -> Iterator[None]:
    """Around a download of `what` from `url`: a network failure becomes a DataError naming both and `fix`
    (where to put the files fetched elsewhere); socket operations time out after 30 s."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(previous or _DOWNLOAD_TIMEOUT_S)
    try:
        yield
    except _NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", None) or first_line(exc)
        raise DataError(f"cannot download {what} from {url} ({reason}): {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)
