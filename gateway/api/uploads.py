"""Receiving an upload over HTTP: stream the multipart body into the data folder.

The request body is parsed as it arrives and the file part is written to a
temporary file inside the data folder's ``tmp/`` (mode 0600), never to the
system's temporary folder, never held whole in memory. The file is
overwritten and removed on every path, success or failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from gateway import audit
from gateway.context import Gateway
from gateway.errors import AccessDenied, GatewayError, SchemaError
from gateway.ingest.upload import record_refused_request


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
    # In the uploader's words: the limit, and what to do; the setting's name is the
    # operator's business (docs/configuration.md), not the uploader's.
    return UploadTooLarge(
        f"the file is larger than the {_size(max_bytes)} the gateway accepts; split it "
        "(by school year, for example) and upload each part, or ask the gateway's operator "
        "to raise the limit"
    )


def _size(count: int) -> str:
    """A byte count as people read it: "25 MB", "512 KB"."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:,.3g} {unit}"
    return f"{count:,} bytes"


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

    def __init__(self, path: Path, display_name: str) -> None:
        self.path = path
        self.display_name = display_name

    def discard(self) -> None:
        """Overwrite and remove the spooled file (it held raw identifiers)."""
        if self.path.exists():
            _shred(str(self.path))
            self.path.unlink(missing_ok=True)


#: A form's text parts are small (a CSRF token, a dataset name): more is refused, so a
#: request cannot make the server hold a large text part in memory.
MAX_TEXT_PART_BYTES = 64 * 1024
MAX_PARTS = 16


class _Parts:
    """The parts of one multipart body: files spooled to disk, text parts bounded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[tuple[bytes | None, bytes | None, Path]] = []  # name, filename, path
        self.count = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_name: list[bytes] = []
        self._header_value: list[bytes] = []
        self._handle: Any = None
        self._text_size = 0

    def part_begin(self) -> None:
        self.count += 1
        if self.count > MAX_PARTS:
            raise BadUploadRequest(f"the form has more than {MAX_PARTS} parts")
        self._headers = {}
        self._handle = None
        self._text_size = 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name.append(data[start:end])

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value.append(data[start:end])

    def header_end(self) -> None:
        name = b"".join(self._header_name).lower()
        self._headers[name] = b"".join(self._header_value).strip(b" \t")
        self._header_name.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        _disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        if filename is None:
            return  # a text part: counted, kept nowhere
        # mkstemp: mode 0600, in the data folder, never the system's temporary folder.
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.folder)
        self._handle = os.fdopen(fd, "wb")
        self.files.append((options.get(b"name"), filename, Path(name)))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self._handle.write(data[start:end])
            return
        self._text_size += end - start
        if self._text_size > MAX_TEXT_PART_BYTES:
            raise BadUploadRequest(
                f"a text part of the form is larger than {MAX_TEXT_PART_BYTES:,} bytes"
            )

    def part_end(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def discard_all(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for _name, _filename, path in self.files:
            ReceivedFile(path, "").discard()
        self.files.clear()


async def receive_file(
    *, headers: dict[str, str], body: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> ReceivedFile:
    """Parse a multipart/form-data body and keep its ``file`` part on disk.

    Text parts are counted and bounded (``MAX_TEXT_PART_BYTES``), never kept; any file
    part other than ``file`` is removed. Every spooled file is overwritten and removed
    on every failure.
    """
    content_type, params = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the extract as multipart/form-data with the file in a field named 'file'"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadUploadRequest("the multipart/form-data content type has no boundary")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_FRAMING_BYTES:
        raise _too_large(max_bytes)
    parts = _Parts(folder)
    callbacks: Any = {
        "on_part_begin": parts.part_begin,
        "on_part_data": parts.part_data,
        "on_part_end": parts.part_end,
        "on_header_field": parts.header_field,
        "on_header_value": parts.header_value,
        "on_header_end": parts.header_end,
        "on_headers_finished": parts.headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    received = 0
    try:
        async for block in body:
            received += len(block)
            if received > max_bytes + MULTIPART_FRAMING_BYTES:
                raise _too_large(max_bytes)
            parser.write(block)
        parser.finalize()
    except GatewayError:
        parts.discard_all()
        raise
    except Exception:  # the multipart parser's own errors
        parts.discard_all()
        raise BadUploadRequest("the multipart body could not be parsed") from None
    wanted = [f for f in parts.files if f[0] == b"file"]
    if len(wanted) != 1:
        parts.discard_all()
        raise BadUploadRequest("send exactly one file, in a form field named 'file'")
    for name, _filename, path in parts.files:
        if name != b"file":
            ReceivedFile(path, "").discard()
    _name, filename, path = wanted[0]
    received_file = ReceivedFile(path, safe_display_name(filename))
    if path.stat().st_size == 0:
        received_file.discard()
        raise SchemaError(f"{received_file.display_name}: the file is empty")
    return received_file


async def spool_upload(
    gateway: Gateway,
    *,
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    agreement_id: str,
    party: str,
    actor: audit.Actor,
    dataset: Callable[[], str],
) -> ReceivedFile:
    """Receive an upload's file into the data folder (:func:`receive_file`).

    A request refused before its file could be read is still an ``upload-refused``
    event (``dataset`` says which dataset it was for, once the form is read); an
    access refusal is already audited and passes through as it is.
    """
    try:
        with upload_folder(gateway.settings.data_dir) as folder:
            return await receive_file(
                headers=headers,
                body=body,
                folder=folder,
                max_bytes=gateway.settings.max_upload_bytes,
            )
    except AccessDenied:
        raise
    except GatewayError as error:
        await run_in_threadpool(
            record_refused_request,
            gateway,
            agreement_id=agreement_id,
            dataset=dataset(),
            party=party,
            actor=actor,
            reason=error.message,
        )
        raise
