"""Names read from a shared store are data, never a path.

A team's MLflow server and bucket are written by every member, their scripts, and whoever holds a
leaked key. A run name, a tag or a bucket key that became a local path as it is could write
anywhere the user can (`../../.bashrc`), so before one names a local file it is made a plain file
name (`file_name`) or checked to stay below its folder (`relative_key`).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class UnsafeName(ValueError):
    """A name from a shared store that would leave the folder it is meant for."""


def file_name(name: str, fallback: str = "study") -> str:
    """`name` as one file name: letters, digits, `_.-` kept, anything else `_`, never hidden
    (no leading dot), so never a path."""
    return UNSAFE.sub("_", name).lstrip(".") or fallback


def is_file_name(name: str) -> bool:
    """Whether `name` is already what `file_name` makes of it."""
    return bool(name) and file_name(name, fallback="") == name


def relative_key(key: str, what: str) -> PurePosixPath:
    """`key` (a bucket key below a prefix, a URI's path) as a relative path that stays below its
    folder; UnsafeName, naming `what` and the rule, when it is empty, absolute or climbs (`..`)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key or "\0" in key:
        raise UnsafeName(
            f"{what} {key!r} must be a relative path that stays below its folder (no leading "
            "'/', no '..' part, no backslash): tuner writes nothing outside the folder it is for"
        )
    return path


def bucket_path(uri: str) -> PurePosixPath:
    """A remote URI's bucket and path (never its user or password) as the relative folder it
    names on this machine; UnsafeName when that folder would climb out (`..`)."""
    parsed = urlparse(uri)
    bucket = parsed.netloc.rpartition("@")[2]
    return relative_key(f"{bucket}{parsed.path}", f"storage '{parsed.scheme}://': bucket and path")
