"""Receiving an upload over HTTP: stream the multipart body into the data folder.

The request body is parsed as it arrives and the file part is written to a
temporary file inside the data folder's ``tmp/`` (mode 0600), never to the
system's temporary folder, never held whole in memory. The file is
overwritten and removed on every path, success or failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from python_multipart.multipart import File, create_form_parser, parse_options_header

from gateway.errors import GatewayError, SchemaError


class UploadTooLarge(GatewayError):
    code = "upload_too_large"
    status = 413


class BadUploadRequest(GatewayError):
    code = "bad_upload_request"
    status = 400


class UnsupportedMediaType(GatewayError):
    code = "unsupported_media_type"
    status = 415


#: What the multipart envelope may add to an upload's file size.
MULTIPART_FRAMING_BYTES = 64 * 1024


def _too_large(max_bytes: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"the upload is larger than the {max_bytes:,} bytes allowed (GATEWAY_MAX_UPLOAD_BYTES)"
    )


@contextmanager
def upload_folder(data_dir: Path) -> Iterator[Path]:
    folder = data_dir / "tmp"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    yield folder


def _shred(path: str) -> None:
    """Overwrite a temporary upload before it is unlinked (raw IDs were in it)."""
    try:
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            remaining = size
            block = b"\0" * (1 << 20)
            while remaining > 0:
                step = min(remaining, len(block))
                handle.write(block[:step])
                remaining -= step
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        pass


def safe_display_name(raw: bytes | None) -> str:
    """The uploaded file's base name, for messages only (it is never stored)."""
    if not raw:
        return "upload"
    name = raw.decode("utf-8", "replace")
    name = PureWindowsPath(PurePosixPath(name).name).name
    return "".join(ch for ch in name if ch.isprintable())[:120] or "upload"


class ReceivedFile:
    """The file part of a multipart request, spooled to the data folder."""

    def __init__(self, part: File, display_name: str) -> None:
        self._part = part
        self.display_name = display_name

    @property
    def path(self) -> Path:
        handle: Any = self._part.file_object
        return Path(handle.name)

    def discard(self) -> None:
        handle: Any = self._part.file_object
        name = getattr(handle, "name", None)
        if isinstance(name, str) and os.path.exists(name):
            _shred(name)
        self._part.close()  # NamedTemporaryFile(delete=True): unlinks it
        if isinstance(name, str) and os.path.exists(name):
            os.unlink(name)


async def receive_file(
    *, headers: dict[str, str], body: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> ReceivedFile:
    """Parse a multipart/form-data body and keep its ``file`` part on disk."""
    content_type, params = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the extract as multipart/form-data with the file in a field named 'file'"
        )
    if not params.get(b"boundary"):
        raise BadUploadRequest("the multipart/form-data content type has no boundary")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_FRAMING_BYTES:
        raise _too_large(max_bytes)
    files: list[File] = []
    others: list[File] = []

    def on_file(part: File) -> None:
        (files if part.field_name == b"file" else others).append(part)

    parser = create_form_parser(
        {k.title(): v.encode("latin-1") for k, v in headers.items()},
        on_field=None,
        on_file=on_file,
        config={
            "UPLOAD_DIR": str(folder),
            "MAX_MEMORY_FILE_SIZE": 0,  # straight to disk in the data folder
            "UPLOAD_DELETE_TMP": True,
        },
    )
    received = 0
    try:
        async for block in body:
            received += len(block)
            if received > max_bytes + MULTIPART_FRAMING_BYTES:
                raise _too_large(max_bytes)
            parser.write(block)
        parser.finalize()
    except GatewayError:
        for part in files + others:
            ReceivedFile(part, "").discard()
        raise
    except Exception:  # the multipart parser's own errors
        for part in files + others:
            ReceivedFile(part, "").discard()
        raise BadUploadRequest("the multipart body could not be parsed") from None
    for part in others:
        ReceivedFile(part, "").discard()
    if len(files) != 1:
        for part in files:
            ReceivedFile(part, "").discard()
        raise BadUploadRequest("send exactly one file, in a form field named 'file'")
    part = files[0]
    if part.in_memory:
        part.flush_to_disk()
    handle: Any = part.file_object
    handle.flush()
    received_file = ReceivedFile(part, safe_display_name(part.file_name))
    if part.size == 0:
        received_file.discard()
        raise SchemaError(f"{received_file.display_name}: the file is empty")
    return received_file
