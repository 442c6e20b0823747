"""Reading uploads safely: a capped in-memory body, an in-memory multipart parser, content sniffing.

Images never touch the disk: the body is read into memory under a size cap (checked first on
``Content-Length`` and then while reading, so a chunked or lying client is cut off too) and the
multipart parts are collected in memory (Starlette's own form parser spools files over 1 MiB to a
temporary file, which is why it is not used). The image type is decided from the bytes, never from
the file name or the part's Content-Type.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from serve.errors import ApiError

#: Magic numbers of the accepted formats (what Pillow would also recognise them by).
ACCEPTED_FORMATS = "JPEG, PNG, TIFF, BMP, WebP"
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
    (b"BM", 0, "BMP"),
)
#: Recognisable non-images, to say what was received instead.
_KNOWN_OTHER: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"GIF8", "a GIF image (not accepted)"),
    (b"PK\x03\x04", "a ZIP archive (or office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<?xml", "an XML/SVG document"),
    (b"<svg", "an SVG document"),
    (b"{", "JSON or text"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image (not accepted)"),
)
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers, small text fields
#: How much of an oversized body is read and dropped so that the client can read the 413.
DRAIN_BYTES = 32 * 1024 * 1024


def sniff_image_format(data: bytes) -> str | None:
    """The accepted image format the bytes start with, or None."""
    for magic, offset, name in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def describe_non_image(data: bytes) -> str:
    head = data[:16].lstrip()
    for magic, what in _KNOWN_OTHER:
        if head.startswith(magic):
            return what
    try:
        data[:512].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


@dataclass
class Part:
    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


class _Body:
    """Reads ASGI body messages directly (can stop and resume, knows when the body has ended)."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self.done = False

    async def chunks(self):
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.request":
                self.done = not message.get("more_body", False)
                body = message.get("body", b"")
                if body:
                    yield body
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()

    async def discard(self, budget: int) -> None:
        """Read and drop up to ``budget`` more bytes (never stored).

        Answering 413 and closing while the client is still sending makes the kernel reset the
        connection, and the client may then lose the answer; draining a bounded amount first lets
        ordinary clients read the 413. Bodies larger than the budget are cut off (connection closed).
        """
        seen = 0
        try:
            async for chunk in self.chunks():
                seen += len(chunk)
                if seen > budget:
                    return
        except ClientDisconnect:
            return


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ApiError 413 as soon as it is known to exceed ``limit`` bytes.

    Checked on ``Content-Length`` before reading anything, then again while reading (chunked or
    lying clients); at most ``limit`` bytes are ever held in memory.
    """
    too_large = {"headers": {"Connection": "close"}}
    reader = _Body(request)
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            declared = int(cl)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
        if declared > limit:
            if declared <= limit + DRAIN_BYTES:
                await reader.discard(DRAIN_BYTES)
            raise ApiError(413, "request_too_large",
                           f"request body of {declared} bytes exceeds the limit of {limit} bytes", **too_large)
    buf = bytearray()
    try:
        async for chunk in reader.chunks():
            buf += chunk
            if len(buf) > limit:
                del buf
                await reader.discard(DRAIN_BYTES)
                raise ApiError(413, "request_too_large", f"request body exceeds the limit of {limit} bytes",
                               **too_large)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "client disconnected while sending the body") from None
    return bytes(buf)


def body_limit(file_limit: int, files: int) -> int:
    return file_limit * files + _MULTIPART_OVERHEAD


def parse_multipart(content_type: str | None, body: bytes, file_limit: int, max_parts: int = 64) -> list[Part]:
    """Parse a multipart/form-data body in memory; each part is capped at ``file_limit`` bytes."""
    if not content_type:
        raise ApiError(415, "unsupported_request_type",
                       "send the image as multipart/form-data (field 'file' or 'files')")
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise ApiError(415, "unsupported_request_type",
                       f"expected multipart/form-data, got {ctype.decode('latin-1', 'replace')!r}; "
                       "send the image as a form field 'file' (or 'files' for /predict/batch)")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart/form-data without a boundary parameter")

    parts: list[Part] = []
    state: dict = {"hname": b"", "hval": b"", "headers": {}, "part": None}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["part"] = None
        if len(parts) >= max_parts:
            raise ApiError(400, "too_many_parts", f"more than {max_parts} form parts")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        if disp != b"form-data" or name is None:
            raise ApiError(400, "bad_request", "a multipart part has no Content-Disposition: form-data name")
        fn = opts.get(b"filename")
        state["part"] = Part(name.decode("utf-8", "replace"), None if fn is None else fn.decode("utf-8", "replace"))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part: Part = state["part"]
        part.data += data[start:end]
        if len(part.data) > file_limit:
            raise ApiError(413, "file_too_large",
                           f"form field {part.name!r} exceeds the per-file limit of {file_limit} bytes")

    def on_part_end() -> None:
        if state["part"] is not None:
            parts.append(state["part"])
            state["part"] = None

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart/form-data body: {exc}") from None
    return parts
