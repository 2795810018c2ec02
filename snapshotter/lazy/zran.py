"""Raw inflate that stops at deflate block boundaries and restarts at any bit: zran.c's
three zlib calls (``Z_BLOCK``, ``inflatePrime``, ``inflateSetDictionary``) over ``ctypes``.

Python's ``zlib`` module cannot take a checkpoint inside a deflate stream: it has no
``Z_BLOCK`` (so it never says where a block ends), no ``inflatePrime`` (so it cannot start
at a bit that is not a byte's first) and no way to read its window out.  The system's
zlib has all three; it is the library CPython's own ``zlib`` module links, so every Linux
that runs Python has it.  ``ctypes`` releases the GIL around each call, so inflating in
FUSE worker threads runs in parallel.

``RawInflater`` is one ``z_stream`` in raw mode (``windowBits = -15``, no gzip header: the
gzip framing is parsed in Python, see ``seek_index``).  ``inflate`` returns after each block
boundary with where it is, as zran.c does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

from ..errors import SnapshotterError

WINDOW = 32768  # deflate's largest distance: the history a checkpoint keeps

Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_BLOCK = 5


class _ZStream(ctypes.Structure):
    """zlib.h's ``z_stream`` (unchanged since zlib 1.0)."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


class ZlibUnavailable(SnapshotterError):
    """The system's zlib (libz.so.1) could not be loaded or lacks what a checkpoint needs."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("z") or "libz.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise ZlibUnavailable(f"zlib: cannot load {name} ({exc})") from exc
    stream_p = ctypes.POINTER(_ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [stream_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [stream_p, ctypes.c_int]
    lib.inflateEnd.argtypes = [stream_p]
    lib.inflatePrime.argtypes = [stream_p, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [stream_p, ctypes.c_char_p, ctypes.c_uint]
    lib.inflateReset.argtypes = [stream_p]
    for f in (
        "inflateInit2_",
        "inflate",
        "inflateEnd",
        "inflatePrime",
        "inflateSetDictionary",
        "inflateReset",
    ):
        getattr(lib, f).restype = ctypes.c_int
    return lib


_lib: ctypes.CDLL | None = None


def zlib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def zlib_version() -> str:
    return str(zlib().zlibVersion().decode())


@dataclass(frozen=True, slots=True)
class Step:
    """What one ``inflate`` call did."""

    consumed: int  # input bytes taken
    produced: bytes  # output
    boundary: bool  # stopped just after a block's end (not the last block's)
    unused_bits: int  # bits of the last byte taken that belong to what follows
    end: bool  # the deflate stream's last block ended


class RawInflater:
    """One raw deflate stream, from its start or from a checkpoint."""

    def __init__(self, what: str, out_size: int = 1 << 18):
        self.what = what
        self._lib = zlib()
        self._z = _ZStream()
        self._out = ctypes.create_string_buffer(out_size)
        self._out_size = out_size
        self._out_addr = ctypes.addressof(self._out)
        version = self._lib.zlibVersion()
        rc = self._lib.inflateInit2_(ctypes.byref(self._z), -15, version, ctypes.sizeof(_ZStream))
        if rc != Z_OK:
            raise ZlibUnavailable(f"{what}: inflateInit2 failed ({rc})")
        self._open = True

    def close(self) -> None:
        if self._open:
            self._lib.inflateEnd(ctypes.byref(self._z))
            self._open = False

    def __del__(self) -> None:
        self.close()

    def reset(self) -> None:
        """Back to the start of a new raw deflate stream (the next gzip member)."""
        self._lib.inflateReset(ctypes.byref(self._z))

    def prime(self, bits: int, value: int) -> None:
        """Insert the ``bits`` low bits of ``value`` before the next input (zran.c)."""
        rc = self._lib.inflatePrime(ctypes.byref(self._z), bits, value)
        if rc != Z_OK:
            raise ZlibUnavailable(f"{self.what}: inflatePrime failed ({rc})")

    def set_window(self, window: bytes) -> None:
        if window:
            rc = self._lib.inflateSetDictionary(ctypes.byref(self._z), window, len(window))
            if rc != Z_OK:
                raise ZlibUnavailable(f"{self.what}: inflateSetDictionary failed ({rc})")

    def inflate(self, data: bytes, start: int, limit: int) -> Step:
        """Inflate ``data[start:]`` until a block boundary, the end of the stream, the end
        of the input or ``limit`` output bytes (at most the output buffer's size)."""
        z = self._z
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        avail = len(data) - start
        z.next_in = base + start
        z.avail_in = avail
        z.next_out = self._out_addr
        out_room = min(limit, self._out_size)
        z.avail_out = out_room
        rc = self._lib.inflate(ctypes.byref(z), Z_BLOCK)
        consumed = avail - z.avail_in
        produced = out_room - z.avail_out
        if rc not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):  # Z_BUF_ERROR: no progress possible
            msg = z.msg.decode(errors="replace") if z.msg else f"error {rc}"
            raise CorruptStream(f"{self.what}: invalid deflate data ({msg})")
        data_type = z.data_type
        return Step(
            consumed,
            ctypes.string_at(self._out_addr, produced) if produced else b"",
            boundary=bool(data_type & 128) and not data_type & 64 and rc != Z_STREAM_END,
            unused_bits=data_type & 7,
            end=rc == Z_STREAM_END,
        )


class CorruptStream(ValueError):
    """Compressed data that does not decompress.  Not a ``SnapshotterError``: in the
    verified pass, ``scan_layer`` checks the blob's digest first and reports a mismatch,
    as it does for any decompressor's complaint."""
