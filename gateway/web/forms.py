"""The upload form's small fields, read as the multipart body streams past.

The upload page's form puts its CSRF token and the dataset before the file input,
and browsers send a form's parts in that order. :class:`LeadingFields` watches the
stream the API's own receiver (:func:`gateway.api.uploads.receive_file`) consumes,
and collects those fields until the first file part begins; so the form is checked
(CSRF, the party's dataset) before a byte of the file is written to disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from python_multipart.multipart import MultipartParser, parse_options_header

#: A leading field longer than this is not one of the page's (they are short).
MAX_FIELD_BYTES = 1024


class LeadingFields:
    """The named text fields that come before the first file part of a multipart body.

    ``fields`` holds what was seen; ``done`` turns True once a file part starts, the
    body ends, or the body cannot be read as the page's form (then the fields seen so
    far are all there is, and the checks refuse what is missing).
    """

    def __init__(self, content_type: str, names: Collection[str]) -> None:
        self.names = frozenset(names)
        self.fields: dict[str, str] = {}
        self.done = False
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._data = bytearray()
        self._name: str | None = None
        self._parser: MultipartParser | None = None
        media, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if media != b"multipart/form-data" or not boundary:
            self.done = True
            return
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value_part,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                },
            )
        except Exception:  # a boundary the parser rejects: the receiver will say so
            self.done = True

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()
        self._name = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = bytes(self._header_name).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).decode("latin-1")
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        if b"filename" in params:
            self.done = True  # the file: everything the checks need came before it
            return
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._name = name if name in self.names and name not in self.fields else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None or self.done:
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            self._name = None

    def _part_end(self) -> None:
        if self._name is not None and not self.done:
            self.fields[self._name] = bytes(self._data).decode("utf-8", "replace")
        self._name = None

    def feed(self, chunk: bytes) -> None:
        if self.done or self._parser is None:
            self.done = True
            return
        try:
            self._parser.write(chunk)
        except Exception:  # not the page's form; the receiver reports the body itself
            self.done = True


async def checked_stream(
    body: AsyncIterator[bytes],
    fields: LeadingFields,
    check: Callable[[dict[str, str]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """``body``, passed on only after ``check`` has accepted the leading fields.

    ``check`` raises (a :class:`gateway.errors.GatewayError`) to refuse; it runs as soon
    as the file part begins, or at the end of a body that has none.
    """
    checked = False
    async for chunk in body:
        if not checked:
            fields.feed(chunk)
            if fields.done:
                await check(fields.fields)
                checked = True
        yield chunk
    if not checked:
        fields.done = True
        await check(fields.fields)
