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
import mmap
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


@dataclass(frozen=True)
class FileFacts:
    """What the gateway learns about an uploaded file before reading rows."""

    name: str
    format: FileFormat
    size: int
    sha256: str


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
    """Size, SHA-256 and format of ``path``; refuse empty, oversized or unreadable files.

    CSV files are checked to be UTF-8 (a BOM is allowed) in the same pass, so
    an encoding problem is reported with its line before any row is read.
    """
    size = path.stat().st_size
    if size == 0:
        raise SchemaError(f"{display_name}: the file is empty")
    if size > max_bytes:
        raise SchemaError(
            f"{display_name}: the file is {size:,} bytes, more than the {max_bytes:,} "
            "allowed (GATEWAY_MAX_UPLOAD_BYTES); split it by school year"
        )
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        head = handle.read(8)
        handle.seek(0)
        file_format = _detect_format(path, head, display_name)
        decoder = codecs.getincrementaldecoder("utf-8")() if file_format == "csv" else None
        line = 1
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
            if decoder is not None:
                line = _check_utf8(decoder, block, line, display_name)
        if decoder is not None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise SchemaError(
                    f"{display_name}: line {line}: the file ends in the middle of a UTF-8 "
                    "character; save it as CSV UTF-8"
                ) from None
    return FileFacts(name=display_name, format=file_format, size=size, sha256=digest.hexdigest())


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
    return "csv"


def _check_utf8(decoder: codecs.IncrementalDecoder, block: bytes, line: int, name: str) -> int:
    try:
        decoder.decode(block)
    except UnicodeDecodeError as error:
        bad_line = line + block.count(b"\n", 0, error.start)
        raise SchemaError(
            f"{name}: line {bad_line}: the file is not UTF-8 text (byte {error.start + 1} of "
            "that block cannot be decoded); save it as CSV UTF-8"
        ) from None
    return line + block.count(b"\n")


# --- CSV --------------------------------------------------------------------------------


def read_csv_header(path: Path, display_name: str) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle))
        except StopIteration:
            raise SchemaError(f"{display_name}: the file has no header row") from None
        except csv.Error:
            raise SchemaError(f"{display_name}: row 1: the header row is not valid CSV") from None
    if not any(cell.strip() for cell in header):
        raise SchemaError(f"{display_name}: row 1: the header row is blank")
    return header


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


def _blank_lines(path: Path) -> IntArray:
    """The line numbers of a CSV's blank lines, sorted.

    pyarrow skips blank lines and numbers rows without them; problems must name the
    line a person sees in the file, so rows are renumbered past these. Most files have
    none, which a search or two of the mapped file shows without reading it line by line.
    """
    if path.stat().st_size == 0:
        return np.empty(0, dtype=np.int64)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # Without any \r (most files; one fast search says so) only \n\n can be blank.
        pairs = (b"\n\n",) if data.find(b"\r") < 0 else (b"\n\n", b"\r\r", b"\n\r")
        if all(data.find(pair) < 0 for pair in pairs):
            return np.empty(0, dtype=np.int64)
        blanks: list[int] = []
        line, start = 1, 0
        for end in _TERMINATOR.finditer(data):  # \r\n, \n and \r end a line, as for pyarrow
            if end.start() == start and line > 1:
                blanks.append(line)
            line, start = line + 1, end.end()
    return np.array(blanks, dtype=np.int64)


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
) -> Iterator[Chunk]:
    """Rows of a UTF-8 CSV (BOM allowed) after its header, as text, in chunks.

    Every chunk but the last holds at least ``chunk_rows`` rows. Rows keep their line
    numbers: a ragged row (another number of fields than the header) is skipped and
    reported by its number. More than ``max_rows`` ragged rows stop the read (pyarrow
    reports them all before it yields a batch, so only this bounds their memory). A
    line pyarrow cannot parse is refused by its position, never by its text.
    """
    names = [f"c{i}" for i in range(len(header))]
    ragged: list[Ragged] = []
    too_many = False
    blanks = _blank_lines(path)

    def as_seen(rows: list[Ragged]) -> list[Ragged]:
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
            path,
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
                    row_numbers=_seen_as(numbers, blanks),
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
        if next_row == 2 and not too_many and not _has_data_lines(path):
            return  # a header and nothing else: the upload says so
        if too_many:
            raise SchemaError(
                f"{display_name}: more than {max_rows:,} data rows "
                "(GATEWAY_MAX_UPLOAD_ROWS); split the file by school year"
            ) from None
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


def open_chunks(
    path: Path,
    facts: FileFacts,
    *,
    sheet: str | None,
    chunk_rows: int,
    max_rows: int | None = None,
) -> tuple[list[str], Iterator[Chunk]]:
    """The header and the row chunks of a file whose format is already known."""
    if facts.format == "csv":
        header = read_csv_header(path, facts.name)
        chunks = csv_chunks(
            path, header=header, chunk_rows=chunk_rows, display_name=facts.name, max_rows=max_rows
        )
        return header, chunks
    if facts.format == "xlsx":
        header, rows = xlsx_rows(path, display_name=facts.name, sheet=sheet)
        return header, xlsx_chunks(rows, width=len(header), chunk_rows=chunk_rows)
    header = parquet_header(path, facts.name)
    return header, parquet_chunks(path, display_name=facts.name, chunk_rows=chunk_rows)


__all__ = ["Chunk", "FileFacts", "FileFormat", "Ragged", "inspect_file", "open_chunks"]
