"""Where a request's video comes from, and whether the server may read it.

A `video_url` is a `data:video/...;base64,` URL, a `file://` URL, a plain local path or (only with
`--allow-remote-media`) an http(s) URL. Local files are read only under the allowed directories,
compared after every symlink and `..` is resolved, so no path can reach outside them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class MediaError(Exception):
    """A request's media cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _write_temporary(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="stormvl-", suffix=suffix if suffix.strip(".").isalnum() else ".mp4")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _fetch(url: str, max_bytes: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read(max_bytes + 1)
    except Exception as e:  # URLError, HTTP errors, bad URLs, timeouts: all the remote's problem
        raise MediaError(400, f"{url}: cannot fetch the video ({type(e).__name__}: {e})") from None
    if len(data) > max_bytes:
        raise MediaError(413, f"{url}: larger than the server's limit of {max_bytes // 2**20} MB")
    return data


@dataclass
class Media:
    path: Path | None  # a local file PyAV can open; None until `open` writes a data: payload
    key: str  # identifies the content: equal keys, equal video
    temporary: bool  # the server wrote it and removes it after decoding
    payload: str | None = None  # a data: URL's base64 text, not yet decoded
    suffix: str = ".mp4"
    url: str | None = None  # a remote video, not yet fetched
    max_bytes: int = 0

    def open(self) -> Path:
        """The video as a local file: a data: payload is decoded, a remote one fetched, once."""
        if self.path is None and self.url is not None:
            self.path = _write_temporary(_fetch(self.url, self.max_bytes), self.suffix)
        elif self.path is None:
            try:
                data = base64.b64decode(self.payload, validate=True)
            except (binascii.Error, ValueError):
                raise MediaError(400, "the video's base64 data is not valid base64") from None
            self.path = _write_temporary(data, self.suffix)
        return self.path

    def cleanup(self):
        if self.temporary and self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class MediaPolicy:
    allowed_dirs: tuple[Path, ...] = ()
    allow_remote: bool = False
    max_bytes: int = 100 * 2**20

    def __post_init__(self):
        self.allowed_dirs = tuple(Path(os.path.realpath(d)) for d in self.allowed_dirs)

    def resolve(self, url: str) -> Media:
        if not isinstance(url, str) or not url.strip():
            raise MediaError(400, "video_url.url must be a non-empty string")
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as e:
            raise MediaError(400, f"not a valid URL ({e})") from None
        scheme = parts.scheme.lower()
        if scheme == "data":
            return self._data(url)
        if scheme in ("http", "https"):
            return self._remote(url)
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise MediaError(400, f"file:// URLs name this machine only, not {parts.netloc!r}")
            return self._local(urllib.parse.unquote(parts.path))
        if scheme and len(scheme) > 1:  # one letter is a Windows drive
            raise MediaError(400, f"unsupported video URL scheme {scheme!r}: use data:, file:// or a local path")
        return self._local(url)

    def _data(self, url: str) -> Media:
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise MediaError(400, "a data: video URL must be data:video/<type>;base64,<data>")
        mime = header[5:].split(";")[0]
        if not mime.startswith("video/"):
            raise MediaError(400, f"a data: URL of type {mime or 'none'!r} is not a video")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise MediaError(413, f"the video is larger than the server's limit of {self.max_bytes // 2**20} MB")
        if not payload:
            raise MediaError(400, "the data: video URL holds no data")
        # Keyed by the text as sent, so a follow-up about a video the server has already encoded
        # costs one hash: the payload is decoded and written only when it is needed (`open`).
        try:
            key = "sha256:" + hashlib.sha256(payload.encode("ascii")).hexdigest()
        except UnicodeEncodeError:
            raise MediaError(400, "the video's base64 data is not valid base64") from None
        suffix = "." + mime.split("/", 1)[1].split("+")[0][:8]
        return Media(None, key, temporary=True, payload=payload, suffix=suffix)

    def _local(self, path: str) -> Media:
        if not self.allowed_dirs:
            raise MediaError(403, "local paths are disabled: start the server with --allowed-local-media-path DIR")
        if "\0" in path:
            raise MediaError(400, "a path may not contain a NUL character")
        # Named with repr in messages: a path may hold newlines or characters JSON cannot carry.
        try:  # a name too long for the system, or one that is not valid Unicode, is no path here
            real = Path(os.path.realpath(path))
        except (OSError, ValueError):
            raise MediaError(400, f"{path!r}: not a path this machine can read") from None
        if not any(real.is_relative_to(d) for d in self.allowed_dirs):
            raise MediaError(403, f"{path!r}: outside the directories this server may read")
        try:
            st = real.stat() if real.is_file() else None
        except (OSError, ValueError):
            raise MediaError(400, f"{path!r}: not a path this machine can read") from None
        if st is None:
            raise MediaError(400, f"{path!r}: no such video file")
        if st.st_size > self.max_bytes:
            raise MediaError(413, f"{path!r}: larger than the server's limit of {self.max_bytes // 2**20} MB")
        # A file is identified by where it is and its version, so an edited file is new content.
        return Media(real, f"file:{real}:{st.st_size}:{st.st_mtime_ns}", temporary=False)

    def _remote(self, url: str) -> Media:
        if not self.allow_remote:
            raise MediaError(400, "remote video URLs are disabled: start the server with --allow-remote-media")
        suffix = Path(urllib.parse.urlsplit(url).path).suffix or ".mp4"
        # Fetched by `open`, in a decoder thread: a slow remote server must not hold the event loop.
        return Media(None, "url:" + url, temporary=True, url=url, suffix=suffix, max_bytes=self.max_bytes)
