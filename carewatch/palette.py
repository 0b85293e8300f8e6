"""The colours people see (dashboard and PDF reports), chosen for WCAG 2.1 AA contrast, and the contrast maths.

Colour is never the only signal: every badge also carries its number and word. Text on a coloured background
meets 4.5:1 (WCAG 1.4.3); chart lines against band shading and the page meet 3:1 (WCAG 1.4.11).
tests/dashboard/test_palette.py computes every pair.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Swatch:
    """A background and the text colour that reads on it."""

    background: str
    text: str


#: NEWS2 badge colours, keyed by the colour names of ``carewatch.scoring.clinical_response`` (+ grey: no score).
NEWS2 = {
    "green": Swatch("#1E6B34", "#FFFFFF"),
    "yellow": Swatch("#FFD23F", "#1A1A1A"),
    "orange": Swatch("#F28C28", "#1A1A1A"),
    "red": Swatch("#B3261E", "#FFFFFF"),
    "grey": Swatch("#5F6368", "#FFFFFF"),
}

#: Alert severities (``carewatch.alerts.Severity``).
SEVERITY = {
    "high": Swatch("#B3261E", "#FFFFFF"),
    "medium": Swatch("#F28C28", "#1A1A1A"),
    "low": Swatch("#FFD23F", "#1A1A1A"),
    "info": Swatch("#1F4E99", "#FFFFFF"),
}

#: Night activity classes of the household report.
NIGHT = {
    "none": Swatch("#1E6B34", "#FFFFFF"),
    "low": Swatch("#FFD23F", "#1A1A1A"),
    "high": Swatch("#B3261E", "#FFFFFF"),
    "no_data": Swatch("#5F6368", "#FFFFFF"),
}
NIGHT_WORDS = {"none": "Settled", "low": "Some activity", "high": "Busy", "no_data": "No data"}

#: Warnings (device batteries, overdue observations) and plain information.
WARNING = Swatch("#8A4B00", "#FFFFFF")
OK = Swatch("#E8F5E9", "#1A1A1A")

#: Chart shading behind a vital sign, by the NEWS2 points a value there scores (0-3).
BAND_FILL = {0: "#E8F5E9", 1: "#FFF5CC", 2: "#FFE0B2", 3: "#FFCDD2"}
PAGE = "#FFFFFF"  # page and card background; also the thin gaps between heatmap squares and night bars
#: Card borders (a resident with no open alert) and other outlines: the well-known AA grey, 4.5:1 on white.
BORDER = "#767676"
#: Bars of time spent out of the home (care-package review), apart from the kitchen (green) and bathroom (blue).
TIME_OUT = "#5F3C99"
#: Streamlit's theme colour (primary buttons, selected chips and controls), with white text on it.
PRIMARY = "#1F4E99"
INK = "#1A1A1A"  # body text and chart lines
BASELINE = "#1F4E99"  # the resident's own baseline on trend charts
#: Heatmap ramp, light (no events) to dark (most events).
HEAT_LOW = "#F7FBFF"
HEAT_HIGH = "#08306B"


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {hex_colour!r} is not #RRGGBB")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def relative_luminance(hex_colour: str) -> float:
    """WCAG 2.1 relative luminance (sRGB, 0 black to 1 white)."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb(hex_colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2.1 contrast ratio, 1 to 21."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def mix(a: str, b: str, t: float) -> str:
    """The colour ``t`` of the way from ``a`` to ``b`` (for heatmap ramps)."""
    t = min(max(t, 0.0), 1.0)
    return "#" + "".join(f"{round(x + (y - x) * t):02X}" for x, y in zip(rgb(a), rgb(b), strict=True))


def readable_text(background: str) -> str:
    """Black or white, whichever contrasts more with ``background`` (one of them always reaches 4.5:1)."""
    return "#000000" if contrast_ratio(background, "#000000") >= contrast_ratio(background, "#FFFFFF") else "#FFFFFF"
