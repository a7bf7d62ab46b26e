"""Hostile inputs for the web demo's tests: files that are small on disk and huge in memory."""

import struct
import zlib

CHANNELS = {0: 1, 2: 3, 6: 4}  # PNG colour types: grey, RGB, RGBA


def png_bomb(width: int, height: int, colour_type: int = 6) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels: under a megabyte for 13000x13000 RGBA
    (ten rows of zeros compress to a few bytes), gigabytes once decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + width * CHANNELS[colour_type])  # a filter byte, then the pixels
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def reset_peak_rss(pid: int | str = "self") -> None:
    """Start a new peak-memory reading of a process (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def rss_kb(pid: int | str = "self") -> tuple[int, int]:
    """(resident memory now, its peak since the last reset) of a process, in kB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
