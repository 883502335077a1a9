"""Reading extracts: CSV, Excel .xlsx and Parquet, recognised by content, in chunks.

Every reader yields :class:`Chunk` objects: a batch of rows as text columns
(one ``pyarrow`` string array per header position) and the row number of each
row, counted as a spreadsheet shows it (the header is row 1). Chunks keep
memory bounded whatever the file size.

Readers never put a cell value into an error message: a bad file is
described by its name, a row and what was expected.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from gateway.errors import SchemaError

FileFormat = Literal["csv", "xlsx", "parquet"]

_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # legacy .xls and other OLE compound files
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_READ_BLOCK = 1 << 20


@dataclass
class FileFacts:
    """What the gateway learns about an uploaded file.

    A CSV is hashed as its rows are read (:class:`ReadThrough`): its ``sha256`` is
    known once the file has been read to its end (:meth:`ReadThrough.finish`).
    """

    name: str
    format: FileFormat
    size: int
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Ragged:
    """A CSV row whose number of fields differs from the header's."""

    row: int
    expected: int
    found: int


@dataclass
class Chunk:
    """A batch of rows: text columns by header position, with their row numbers."""

    columns: list[pa.Array]
    row_numbers: np.ndarray[Any, np.dtype[np.int64]]
    ragged: list[Ragged] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row_numbers)


def inspect_file(path: Path, *, display_name: str, max_bytes: int) -> FileFacts:
    """Size and format of ``path``; refuse empty, oversized or unrecognised files.

    Excel and Parquet files are read at random places by their libraries, so they are
    hashed here, whole; a CSV is hashed, checked to be UTF-8 and searched for blank
    lines in the one pass that parses it (:class:`ReadThrough`).
    """
    size = path.stat().st_size
    if size == 0:
        raise SchemaError(f"{display_name}: the file is empty")
    if size > max_bytes:
        raise SchemaError(
            f"{display_name}: the file is {size:,} bytes, more than the {max_bytes:,} the "
            "gateway accepts; split it by school year and upload each part, or ask the "
            "gateway's operator to raise the limit"
        )
    with path.open("rb") as handle:
        head = handle.read(8)
    file_format = _detect_format(path, head, display_name)
    sha256: str | None = None
    if file_format != "csv":
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
        sha256 = digest.hexdigest()
    return FileFacts(name=display_name, format=file_format, size=size, sha256=sha256)


def _detect_format(path: Path, head: bytes, display_name: str) -> FileFormat:
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile:
            raise SchemaError(f"{display_name}: the file is a damaged ZIP archive") from None
        if "xl/workbook.xml" in names:
            return "xlsx"
        raise SchemaError(
            f"{display_name}: the file is a ZIP archive but not an Excel workbook; "
            "upload CSV, Excel .xlsx or Parquet"
        )
    if head.startswith(_OLE_MAGIC):
        raise SchemaError(
            f"{display_name}: legacy Excel .xls files are not accepted; save it as .xlsx or CSV"
        )
    if head.startswith(_UTF16_BOMS):
        raise SchemaError(
            f"{display_name}: line 1: the file is UTF-16 text, not UTF-8; save it as CSV UTF-8"
        )
    for magic, kind in _NOT_TABLES:
        if head.startswith(magic):
            # Named for what it is: "save it as CSV UTF-8" means nothing for a picture.
            raise SchemaError(
                f"{display_name}: the file is {kind}, not a table; upload the extract itself, "
                "saved from the spreadsheet or database as CSV UTF-8, Excel .xlsx or Parquet"
            )
    return "csv"


#: Files people attach by mistake, recognised by their first bytes.
_NOT_TABLES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
)


class ReadThrough:
    """A CSV file read once, front to back: hashed, checked to be UTF-8 and searched for
    blank lines as the parser reads it.

    pyarrow's CSV reader pulls blocks through :meth:`read`; by the time it yields a
    batch, every byte of that batch has passed through here, so the blank lines before
    it are known (:meth:`blank_lines`). A byte that is not UTF-8 stops the read with the
    line it is on. :meth:`finish` reads whatever the parser left (a refused file is
    still hashed whole) and returns the file's SHA-256.
    """

    def __init__(self, path: Path, *, display_name: str) -> None:
        self._handle = path.open("rb")
        self._name = display_name
        self._digest = hashlib.sha256()
        self._decoder: codecs.IncrementalDecoder | None = codecs.getincrementaldecoder("utf-8")()
        self.bytes_read = 0
        self._line = 1  # the line the next byte is on (\r\n, \n and \r end a line)
        self._newlines = 0  # \n seen, for naming the line of an encoding error
        self._at_line_start = True
        self._after_cr = False  # the last byte was \r: a \n next completes \r\n
        self._blanks: list[int] = []
        self._blank_array: IntArray | None = np.empty(0, dtype=np.int64)
        self._sha256: str | None = None

    # The file-object protocol pyarrow reads through.
    @property
    def closed(self) -> bool:
        return self._handle.closed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._handle.close()

    def read(self, size: int = -1) -> bytes:
        whole = size is None or size < 0
        block = self._handle.read(-1 if whole else size)
        self._take(block)
        if whole or len(block) < size:  # the end of a regular file: no character may be cut
            self._end_of_text()
        return block

    def _end_of_text(self) -> None:
        if self._decoder is None:
            return
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            self._decoder = None
            raise SchemaError(
                f"{self._name}: line {1 + self._newlines}: the file ends in the middle "
                "of a UTF-8 character; save it as CSV UTF-8"
            ) from None

    def _take(self, block: bytes) -> None:
        if not block:
            return
        self._digest.update(block)
        try:
            if self._decoder is not None:
                self._decoder.decode(block)
        except UnicodeDecodeError as error:
            self._decoder = None  # reported once; the rest is still hashed
            bad_line = 1 + self._newlines + block.count(b"\n", 0, max(error.start, 0))
            raise SchemaError(
                f"{self._name}: line {bad_line}: the file is not UTF-8 text (byte "
                f"{self.bytes_read + error.start + 1:,} of the file cannot be decoded); "
                "save it as CSV UTF-8"
            ) from None
        self._count_lines(block)
        self._newlines += block.count(b"\n")
        self.bytes_read += len(block)

    def _count_lines(self, block: bytes) -> None:
        skip = 1 if self._after_cr and block[:1] == b"\n" else 0  # the \n of a split \r\n
        has_cr = block.find(b"\r") >= 0
        blank_possible = (
            (self._at_line_start and block[skip : skip + 1] in (b"\n", b"\r"))
            or block.find(b"\n\n") >= 0
            or (has_cr and (block.find(b"\r\r") >= 0 or block.find(b"\n\r") >= 0))
        )
        if not blank_possible:  # most blocks: count line ends, in C
            ends = block.count(b"\n") - skip
            if has_cr:
                ends += block.count(b"\r") - block.count(b"\r\n")
        else:
            ends = 0
            start = skip
            at_start = self._at_line_start
            for end in _TERMINATOR.finditer(block, skip):
                if end.start() == start and at_start and self._line + ends > 1:
                    self._blanks.append(self._line + ends)
                    self._blank_array = None
                ends += 1
                start, at_start = end.end(), True
        self._line += ends
        last = block[-1:]
        self._after_cr = last == b"\r"
        self._at_line_start = last in (b"\n", b"\r") or (self._at_line_start and skip == len(block))

    def blank_lines(self) -> IntArray:
        """The line numbers of the blank lines read so far, sorted."""
        if self._blank_array is None:
            self._blank_array = np.array(self._blanks, dtype=np.int64)
        return self._blank_array

    def finish(self) -> str:
        """Read the rest of the file and return its SHA-256; raise the first encoding
        problem of the rest, if any, once the whole file is hashed."""
        if self._sha256 is None:
            problem: SchemaError | None = None
            while block := self._handle.read(_READ_BLOCK):
                try:
                    self._take(block)
                except SchemaError as error:
                    problem = problem or error
            try:
                self._end_of_text()
            except SchemaError as error:
                problem = problem or error
            self._sha256 = self._digest.hexdigest()
            self._handle.close()
            if problem is not None:
                raise problem
        return self._sha256


# --- CSV --------------------------------------------------------------------------------


def read_csv_header(path: Path, display_name: str) -> list[str]:
    # Undecodable bytes are kept as surrogates here: the header names them as line 1
    # only if they are on it; lines after it are checked as they are parsed.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        try:
            header = next(csv.reader(handle))
        except StopIteration:
            raise SchemaError(f"{display_name}: the file has no header row") from None
        except csv.Error:
            raise SchemaError(f"{display_name}: row 1: the header row is not valid CSV") from None
    if any(_SURROGATE.search(cell) for cell in header):
        raise SchemaError(
            f"{display_name}: line 1: the file is not UTF-8 text; save it as CSV UTF-8"
        )
    if not any(cell.strip() for cell in header):
        raise SchemaError(f"{display_name}: row 1: the header row is blank")
    return header


_SURROGATE = re.compile("[\udc80-\udcff]")
_CSV_BLOCK_BYTES = 2 << 20


def _joined(chunks: list[Chunk]) -> Chunk:
    """Consecutive chunks as one."""
    if len(chunks) == 1:
        return chunks[0]
    return Chunk(
        columns=[
            pa.concat_arrays(list(parts))
            for parts in zip(*(c.columns for c in chunks), strict=True)
        ],
        row_numbers=np.concatenate([c.row_numbers for c in chunks]),
        ragged=[r for c in chunks for r in c.ragged],
    )


_TERMINATOR = re.compile(rb"\r\n|\n|\r")
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def _seen_as(numbers: IntArray, blanks: IntArray) -> IntArray:
    """Row numbers counted without blank lines (pyarrow's) as lines of the file."""
    if not blanks.size or not numbers.size:
        return numbers
    # Before the i-th blank line (0-based) come blanks[i] - 1 - i lines that are not blank.
    after = blanks - np.arange(len(blanks), dtype=np.int64)
    return numbers + np.searchsorted(after, numbers, side="right")


def _has_data_lines(path: Path) -> bool:
    """Whether anything but blank lines follows a CSV's header line."""
    with path.open("rb") as handle:
        handle.readline()
        return any(line.strip() for line in handle)


def csv_chunks(
    path: Path,
    *,
    header: list[str],
    chunk_rows: int,
    display_name: str = "the file",
    max_rows: int | None = None,
    source: ReadThrough | None = None,
) -> Iterator[Chunk]:
    """Rows of a UTF-8 CSV (BOM allowed) after its header, as text, in chunks.

    Every chunk but the last holds at least ``chunk_rows`` rows. Rows keep their line
    numbers: a ragged row (another number of fields than the header) is skipped and
    reported by its number. More than ``max_rows`` ragged rows stop the read (pyarrow
    reports them all before it yields a batch, so only this bounds their memory). A
    line pyarrow cannot parse is refused by its position, never by its text.

    The file is read once, through ``source`` (a :class:`ReadThrough` of ``path``, made
    here if not given), which hashes it and checks its encoding on the way.
    """
    if source is None:
        own = ReadThrough(path, display_name=display_name)
        try:
            yield from csv_chunks(
                path,
                header=header,
                chunk_rows=chunk_rows,
                display_name=display_name,
                max_rows=max_rows,
                source=own,
            )
        finally:
            own.close()
        return
    names = [f"c{i}" for i in range(len(header))]
    ragged: list[Ragged] = []
    too_many = False

    def as_seen(rows: list[Ragged]) -> list[Ragged]:
        blanks = source.blank_lines()
        if not blanks.size:
            return rows
        lines = _seen_as(np.array([r.row for r in rows], dtype=np.int64), blanks)
        return [
            Ragged(row=int(n), expected=r.expected, found=r.found)
            for r, n in zip(rows, lines, strict=True)
        ]

    def on_invalid_row(row: Any) -> str:
        nonlocal too_many
        if max_rows is not None and len(ragged) >= max_rows:
            too_many = True
            return "error"  # stops the read; the error raised below says why, not this
        # Keep only the position and field counts; row.text holds raw values.
        ragged.append(
            Ragged(row=row.number, expected=row.expected_columns, found=row.actual_columns)
        )
        return "skip"

    # pyarrow reads about 32 blocks ahead of the batch it yields, so blocks stay small
    # (2 MB: some 70 MB read ahead) and batches are joined into chunks of chunk_rows.
    block_size = max(1 << 16, min(_CSV_BLOCK_BYTES, chunk_rows * 96))
    next_row = 2
    ragged_seen = 0
    held: list[Chunk] = []
    held_rows = 0
    try:
        reader = pa_csv.open_csv(
            source,
            read_options=pa_csv.ReadOptions(
                column_names=names, skip_rows=1, block_size=block_size, use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            # Skipped (ragged) rows keep their numbers: count past them.
            pending = sorted(r.row for r in ragged[ragged_seen:])
            numbers = np.arange(next_row, next_row + batch.num_rows + len(pending), dtype=np.int64)
            if pending:
                numbers = numbers[~np.isin(numbers, pending)]
            numbers = numbers[: batch.num_rows]
            last = int(numbers[-1]) if len(numbers) else next_row - 1
            new_ragged = [r for r in ragged[ragged_seen:] if r.row <= last]
            ragged_seen += len(new_ragged)
            next_row = last + 1
            held.append(
                Chunk(
                    columns=list(batch.columns),
                    row_numbers=_seen_as(numbers, source.blank_lines()),
                    ragged=as_seen(new_ragged),
                )
            )
            held_rows += batch.num_rows
            del batch
            if held_rows >= chunk_rows:
                joined, held, held_rows = _joined(held), [], 0
                yield joined
                del joined
    except pa.ArrowException:
        # pyarrow refuses text that is not UTF-8 too: say which line, as the read-through does.
        source.finish()
        if next_row == 2 and not too_many and not _has_data_lines(path):
            return  # a header and nothing else: the upload says so
        if too_many:
            raise SchemaError(
                f"{display_name}: more than the {max_rows:,} data rows the gateway accepts "
                "in one file; split it by school year and upload each part"
            ) from None
        blanks = source.blank_lines()
        after = int(_seen_as(np.array([next_row - 1], dtype=np.int64), blanks)[0])
        raise SchemaError(
            f"{display_name}: a line after row {after} could not be read as CSV; expected "
            f"comma-separated fields on lines of ordinary length (under {block_size:,} bytes)"
        ) from None
    # Ragged rows after the last data row go with the last chunk (or alone).
    if held:
        last_chunk = _joined(held)
        last_chunk.ragged.extend(as_seen(ragged[ragged_seen:]))
        yield last_chunk
    elif ragged_seen < len(ragged):
        yield Chunk(
            columns=[pa.array([], pa.string()) for _ in names],
            row_numbers=np.array([], dtype=np.int64),
            ragged=as_seen(ragged[ragged_seen:]),
        )


# --- Excel ------------------------------------------------------------------------------


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int | float | bool | date | datetime | time):
        # An array or data-table formula object: show it as the formula it is, so the
        # profile's formula rule meets it rather than its Python description.
        text = str(getattr(value, "text", "") or "")
        return text if text.startswith("=") else "=" + text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def xlsx_rows(
    path: Path, *, display_name: str, sheet: str | None
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and an iterator of (row number, cells as text) of one worksheet."""
    import openpyxl  # imported here: only Excel uploads pay for it

    handle = path.open("rb")  # a file object: openpyxl would judge a path by its extension
    try:
        # data_only=False: a formula cell arrives as its formula text ("=A2*2"), so the
        # profile's formula rule sees it, instead of a cached value that may be stale or
        # missing. Extracts should hold values, not formulas.
        workbook = openpyxl.load_workbook(handle, read_only=True, data_only=False)
    except Exception:  # openpyxl raises many kinds on damaged files
        handle.close()
        raise SchemaError(f"{display_name}: the Excel workbook cannot be opened") from None
    if sheet is not None and sheet not in workbook.sheetnames:
        workbook.close()
        handle.close()
        raise SchemaError(
            f"{display_name}: no worksheet named {sheet!r} (worksheets: "
            f"{', '.join(workbook.sheetnames)})"
        )
    worksheet = workbook[sheet] if sheet is not None else workbook.worksheets[0]
    rows = worksheet.iter_rows(values_only=True)
    try:
        header_cells = next(rows)
    except StopIteration:
        workbook.close()
        handle.close()
        raise SchemaError(f"{display_name}: the worksheet is empty") from None
    header = [_cell_text(v).strip() for v in header_cells]
    while header and not header[-1]:
        header.pop()
    if not header:
        workbook.close()
        handle.close()
        raise SchemaError(f"{display_name}: row 1: the header row is blank")
    width = len(header)

    def body() -> Iterator[tuple[int, list[str]]]:
        try:
            for number, values in enumerate(rows, start=2):
                cells = [_cell_text(v) for v in values[:width]]
                if not any(cells) and not any(v is not None for v in values[width:]):
                    continue  # blank row (often trailing formatting)
                cells += [""] * (width - len(cells))
                yield number, cells
        finally:
            workbook.close()
            handle.close()

    return header, body()


def xlsx_chunks(
    rows: Iterator[tuple[int, list[str]]], *, width: int, chunk_rows: int
) -> Iterator[Chunk]:
    buffer: list[list[str]] = []
    numbers: list[int] = []
    for number, cells in rows:
        buffer.append(cells)
        numbers.append(number)
        if len(buffer) >= chunk_rows:
            yield _chunk_from_rows(buffer, numbers, width)
            buffer, numbers = [], []
    if buffer:
        yield _chunk_from_rows(buffer, numbers, width)


def _chunk_from_rows(rows: list[list[str]], numbers: list[int], width: int) -> Chunk:
    columns = [pa.array([row[i] for row in rows], pa.string()) for i in range(width)]
    return Chunk(columns=columns, row_numbers=np.array(numbers, dtype=np.int64))


# --- Parquet ----------------------------------------------------------------------------


def parquet_header(path: Path, display_name: str) -> list[str]:
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, OSError):
        raise SchemaError(f"{display_name}: the Parquet file cannot be read") from None


def parquet_chunks(path: Path, *, display_name: str, chunk_rows: int) -> Iterator[Chunk]:
    """Rows of a Parquet file as text columns (typed values written as text)."""
    next_row = 2
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            columns = [_as_text(column) for column in batch.columns]
            numbers = np.arange(next_row, next_row + batch.num_rows, dtype=np.int64)
            next_row += batch.num_rows
            yield Chunk(columns=columns, row_numbers=numbers)
    except pa.ArrowException:
        raise SchemaError(
            f"{display_name}: rows {next_row} onwards of the Parquet file cannot be read"
        ) from None


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.date32())  # extracts carry dates, not instants
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    return pc.fill_null(column, "")


@dataclass
class OpenedFile:
    """An extract opened for reading: its header and its chunks of rows."""

    facts: FileFacts
    header: list[str]
    chunks: Iterator[Chunk]
    source: ReadThrough | None = None  # a CSV's one pass

    @property
    def bytes_read(self) -> int:
        return self.source.bytes_read if self.source is not None else 0

    def sha256(self) -> str:
        """The file's SHA-256 (a CSV is read to its end first, if it is not yet)."""
        if self.facts.sha256 is None and self.source is not None:
            self.facts.sha256 = self.source.finish()
        assert self.facts.sha256 is not None
        return self.facts.sha256

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def open_chunks(
    path: Path,
    facts: FileFacts,
    *,
    sheet: str | None,
    chunk_rows: int,
    max_rows: int | None = None,
) -> OpenedFile:
    """The header and the row chunks of a file whose format is already known."""
    if facts.format == "csv":
        header = read_csv_header(path, facts.name)
        source = ReadThrough(path, display_name=facts.name)
        chunks = csv_chunks(
            path,
            header=header,
            chunk_rows=chunk_rows,
            display_name=facts.name,
            max_rows=max_rows,
            source=source,
        )
        return OpenedFile(facts, header, chunks, source)
    if facts.format == "xlsx":
        header, rows = xlsx_rows(path, display_name=facts.name, sheet=sheet)
        return OpenedFile(
            facts, header, xlsx_chunks(rows, width=len(header), chunk_rows=chunk_rows)
        )
    header = parquet_header(path, facts.name)
    return OpenedFile(
        facts, header, parquet_chunks(path, display_name=facts.name, chunk_rows=chunk_rows)
    )


__all__ = [
    "Chunk",
    "FileFacts",
    "FileFormat",
    "OpenedFile",
    "Ragged",
    "ReadThrough",
    "inspect_file",
    "open_chunks",
]
