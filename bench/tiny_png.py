"""A tiny PNG bar-chart renderer: the fallback when matplotlib cannot be installed.

Stdlib only (zlib + struct). It draws the same chart as chart.py, cruder: one bar
per target, log scale, the target as a black tick, text in a 5x7 upper-case font.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

# 5x7 glyphs, one int per row, the high bit of 5 on the left.
# fmt: off
_FONT: dict[str, tuple[int, ...]] = {
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (30, 17, 17, 17, 17, 17, 30), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 10, 4, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8), ":": (0, 12, 12, 0, 12, 12, 0),
    "-": (0, 0, 0, 31, 0, 0, 0), "+": (0, 4, 4, 31, 4, 4, 0), "=": (0, 0, 31, 0, 31, 0, 0),
    ">": (8, 4, 2, 1, 2, 4, 8), "<": (2, 4, 8, 16, 8, 4, 2), "/": (1, 1, 2, 4, 8, 16, 16),
    "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8), "%": (24, 25, 2, 4, 8, 19, 3),
    " ": (0, 0, 0, 0, 0, 0, 0),
}
# fmt: on

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (150, 150, 150)
GREEN: Color = (46, 139, 87)
RED: Color = (192, 57, 43)


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(WHITE * width) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        for y in range(max(0, y0), min(self.height, y1)):
            self.rows[y][3 * x0 : 3 * x1] = bytes(color) * (x1 - x0)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> None:
        for char in text.upper():
            glyph = _FONT.get(char, _FONT["."])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (16 >> col):
                        px, py = x + col * scale, y + row * scale
                        self.rect(px, py, px + scale, py + scale, color)
            x += 6 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        png = (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        )
        path.write_bytes(png)


def render_report(report: dict[str, Any], path: Path) -> None:
    bars = report["chart"]
    label_w, plot_w, bar_h, top = 330, 420, 22, 40
    canvas = Canvas(label_w + plot_w + 80, top + bar_h * len(bars) + 40)
    values = [b["advantage"] for b in bars] + [b["goal"] for b in bars] + [1.0]
    lo, hi = math.log10(min(values) / 1.5), math.log10(max(values) * 1.5)

    def x_of(value: float) -> int:
        return label_w + int((math.log10(value) - lo) / (hi - lo) * plot_w)

    canvas.text(10, 10, "OTPY VS PEERS: TIMES BETTER (LOG SCALE), BLACK TICK = TARGET", scale=1)
    canvas.rect(x_of(1.0), top - 5, x_of(1.0) + 1, top + bar_h * len(bars), GREY)
    for i, bar in enumerate(bars):
        y = top + i * bar_h
        canvas.text(10, y + 7, bar["label"][:54])
        color = GREEN if bar["verdict"] == "PASS" else RED
        canvas.rect(x_of(1.0), y + 4, x_of(bar["advantage"]), y + bar_h - 4, color)
        canvas.rect(x_of(bar["goal"]) - 1, y + 1, x_of(bar["goal"]) + 2, y + bar_h - 1, BLACK)
        end = max(bar["advantage"], bar["goal"], 1.0)
        canvas.text(x_of(end) + 6, y + 7, f"{bar['ratio']:.2f}X")
    canvas.save(path)
