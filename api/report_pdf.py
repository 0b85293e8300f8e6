"""The care-package review as a PDF: summary, package, benefit, and the evidence charts drawn with fpdf2.

Charts are drawn with fpdf2's own rectangles and lines (no browser or image renderer needed on the server):
the night-activity heatmap (hour × day), night classes, bathroom visits per night, kitchen sessions and time
out per day, and a room-temperature table. Every colour has its word beside it. The PDF core fonts are
Latin-1, so text is reduced to Latin-1 (a name in another script prints with '?' rather than failing).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from carewatch import palette
from carewatch.api.rightsizing import RightsizingReport

MARGIN = 15.0
WIDTH = 210.0 - 2 * MARGIN
NIGHT_LETTERS = {"none": "S", "low": "A", "high": "B", "no_data": "N"}  # Settled, some Activity, Busy, No data
LOCAL_NOTE = "Nights are 00:00-06:00 and days are calendar days, in UK local time."


def _latin1(text: str) -> str:
    return text.replace("–", "-").replace("—", "-").replace("’", "'").encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(format="A4", unit="mm")
        self.title_text = title
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(auto=True, margin=MARGIN)
        self.set_title(_latin1(title))
        self.set_creator("Carewatch")

    def footer(self) -> None:
        self.set_y(-10)
        self.set_font("Helvetica", size=7)
        self.set_text_color(*palette.rgb(palette.INK))
        self.cell(0, 4, _latin1(f"{self.title_text} - page {self.page_no()}"), align="C")

    # -- text helpers ------------------------------------------------------------------------------------
    def heading(self, text: str, size: float = 12) -> None:
        self.ensure_space(12)
        self.set_font("Helvetica", "B", size)
        self.set_text_color(*palette.rgb(palette.INK))
        self.cell(0, size * 0.55, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(1)

    def para(self, text: str, size: float = 10, bold: bool = False) -> None:
        self.set_font("Helvetica", "B" if bold else "", size)
        self.set_text_color(*palette.rgb(palette.INK))
        self.multi_cell(WIDTH, size * 0.5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(1)

    def ensure_space(self, height: float) -> None:
        if self.get_y() + height > self.h - MARGIN:
            self.add_page()

    def fill(self, colour: str) -> None:
        self.set_fill_color(*palette.rgb(colour))

    def swatch(self, x: float, y: float, swatch: palette.Swatch, label: str, w: float, h: float = 5) -> None:
        self.fill(swatch.background)
        self.rect(x, y, w, h, style="F")
        self.set_text_color(*palette.rgb(swatch.text))
        self.set_font("Helvetica", "B", 8)
        self.set_xy(x, y)
        self.cell(w, h, _latin1(label), align="C")
        self.set_text_color(*palette.rgb(palette.INK))

    # -- charts ------------------------------------------------------------------------------------------
    def bar_chart(self, title: str, labels: Sequence[str], values: Sequence[float | None], unit: str,
                  colour: str = palette.BASELINE, height: float = 32) -> None:
        """Vertical bars with a value axis (0 to max) and every n-th label under the bars."""
        self.ensure_space(height + 24)  # heading and chart on the same page
        self.heading(title, 10)
        top = self.get_y()
        axis_w = 12.0
        x0, plot_w = MARGIN + axis_w, WIDTH - axis_w
        present = [v for v in values if v is not None]
        peak = max(present, default=0) or 1
        self.set_draw_color(*palette.rgb(palette.INK))
        self.set_line_width(0.2)
        self.line(x0, top, x0, top + height)
        self.line(x0, top + height, x0 + plot_w, top + height)
        self.set_font("Helvetica", size=6)
        for frac in (0.0, 0.5, 1.0):
            y = top + height - frac * height
            self.set_xy(MARGIN, y - 1.5)
            self.cell(axis_w - 1, 3, f"{peak * frac:g}", align="R")
        n = max(len(values), 1)
        slot = plot_w / n
        self.fill(colour)
        for i, v in enumerate(values):
            if v is None:
                self.set_xy(x0 + i * slot, top + height - 3)
                self.cell(slot, 3, "-", align="C")
                continue
            h = height * (v / peak)
            self.rect(x0 + i * slot + slot * 0.15, top + height - h, slot * 0.7, h, style="F")
        step = max(1, round(n / 10))
        for i, label in enumerate(labels):
            if i % step == 0 or i == n - 1:
                self.set_xy(x0 + i * slot - 4, top + height + 0.5)
                self.cell(slot + 8, 3, _latin1(label), align="C")
        self.set_xy(MARGIN, top + height + 4)
        self.set_font("Helvetica", "I", 7)
        self.cell(0, 3, _latin1(f"Bars: {unit}. Highest: {peak:g}."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(2)

    def heatmap(self, days: Sequence[str], counts: Sequence[Sequence[int]]) -> None:
        """Rows are days (oldest first), columns are hours 00-23; darker = more activity events."""
        label_w = 16.0
        cell_w = (WIDTH - label_w) / 24
        cell_h = max(2.0, min(5.0, 150.0 / max(len(days), 1)))
        self.ensure_space(cell_h * len(days) + 30)
        self.heading("Activity by hour of day (night-activity heatmap)", 10)
        top = self.get_y()
        peak = max((c for row in counts for c in row), default=0) or 1
        self.set_font("Helvetica", size=6)
        for h in range(0, 24, 2):
            self.set_xy(MARGIN + label_w + h * cell_w, top)
            self.cell(cell_w, 3, f"{h:02d}", align="C")
        top += 3.5
        self.fill("#D9D9D9")  # night band marker above 00-06
        self.rect(MARGIN + label_w, top - 0.8, 6 * cell_w, 0.6, style="F")
        step = max(1, round(len(days) / 30))
        for r, (day, row) in enumerate(zip(days, counts, strict=True)):
            y = top + r * cell_h
            if r % step == 0:
                self.set_font("Helvetica", size=min(6.0, cell_h * 2))
                self.set_xy(MARGIN, y)
                self.cell(label_w - 1, cell_h, day, align="R")
            for h, c in enumerate(row):
                colour = palette.mix(palette.HEAT_LOW, palette.HEAT_HIGH, c / peak)
                self.fill(colour)
                self.rect(MARGIN + label_w + h * cell_w, y, cell_w, cell_h, style="F")
                if c and cell_h >= 3.5:
                    self.set_text_color(*palette.rgb(palette.readable_text(colour)))
                    self.set_font("Helvetica", size=5.5)
                    self.set_xy(MARGIN + label_w + h * cell_w, y)
                    self.cell(cell_w, cell_h, str(c), align="C")
                    self.set_text_color(*palette.rgb(palette.INK))
        y = top + len(days) * cell_h + 1.5
        self.set_font("Helvetica", size=7)
        self.set_xy(MARGIN, y)
        self.cell(0, 3.5, _latin1(f"Each square counts activity events starting in that hour: white = none, darkest = "
                                  f"{peak}. The grey bar marks the night (00:00-06:00)."),
                  new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(2)

    def night_strip(self, nights: Sequence[tuple[str, str]]) -> None:
        """One coloured square per night with its letter, and a legend with the words."""
        self.ensure_space(30)
        self.heading("Night by night", 10)
        top = self.get_y()
        cell = min(6.0, WIDTH / max(len(nights), 1))
        for i, (_, activity) in enumerate(nights):
            sw = palette.NIGHT[activity]
            self.fill(sw.background)
            self.rect(MARGIN + i * cell, top, cell - 0.3, 6, style="F")
            if cell >= 3:
                self.set_text_color(*palette.rgb(sw.text))
                self.set_font("Helvetica", "B", 6)
                self.set_xy(MARGIN + i * cell, top)
                self.cell(cell - 0.3, 6, NIGHT_LETTERS[activity], align="C")
        self.set_text_color(*palette.rgb(palette.INK))
        if nights:
            self.set_font("Helvetica", size=6)
            self.set_xy(MARGIN, top + 6.5)
            self.cell(40, 3, nights[0][0])
            self.set_xy(MARGIN + len(nights) * cell - 40, top + 6.5)
            self.cell(40, 3, nights[-1][0], align="R")
        x = MARGIN
        for key, word in palette.NIGHT_WORDS.items():
            self.swatch(x, top + 11, palette.NIGHT[key], f"{NIGHT_LETTERS[key]} = {word}", 40)
            x += 43
        self.set_xy(MARGIN, top + 18)
        self.ln(1)


def render_pdf(data: RightsizingReport, generated_at: datetime) -> bytes:
    """The whole report; returns the PDF file's bytes."""
    r = data.report
    pdf = _Report(f"Care package review: {r.name}")
    pdf.add_page()
    pdf.heading(f"Care package review: {r.name}", 15)
    pdf.para(f"Evidence period: {r.days} nights, {r.start:%d %b %Y} to {r.end:%d %b %Y}. "
             f"Generated {generated_at:%d %b %Y %H:%M} UTC from home-sensor data. {LOCAL_NOTE}", 8)
    pdf.heading("Summary", 11)
    pdf.para(r.summary, 11, bold=True)
    package = r.care_package
    if package.description:
        cost = f", {package.hours_per_week:g} hours a week" if package.hours_per_week is not None else ""
        if package.weekly_cost_gbp is not None:
            cost += f" at £{package.hourly_rate_gbp:,.2f} an hour = £{package.weekly_cost_gbp:,.2f} a week"
        pdf.para(f"Current package: {package.description}{cost}.")
    else:
        pdf.para("No care package is recorded for this household.")
    if data.benefit is not None:
        pdf.heading("Benefit if the package changes (reviewer's figures)", 11)
        pdf.para(data.benefit.sentence)
    elif data.note:
        pdf.para(data.note, 9)
    counts = r.night_counts
    pdf.heading("Nights", 11)
    pdf.para(f"Settled (no activity other than at most one bathroom visit): {counts.get('none', 0)}. "
             f"Some activity: {counts.get('low', 0)}. Busy: {counts.get('high', 0)}. "
             f"No sensor data: {counts.get('no_data', 0)}.")
    extras = []
    if r.bathroom_visits_per_night is not None:
        extras.append(f"Bathroom visits per night: {r.bathroom_visits_per_night:g} on average, at most "
                      f"{r.max_bathroom_visits}.")
    if r.mean_kitchen_sessions_per_day is not None:
        extras.append(f"Kitchen use: {r.mean_kitchen_sessions_per_day:g} sessions a day on average (meals and drinks).")
    if r.mean_minutes_out_per_day is not None:
        extras.append(f"Time out of the home: {r.mean_minutes_out_per_day:g} minutes a day on average.")
    if extras:
        pdf.para(" ".join(extras))
    pdf.night_strip([(n.night.strftime("%d %b"), n.activity) for n in r.nights])
    pdf.heatmap([d.strftime("%a %d %b") for d in r.heatmap.days], r.heatmap.counts)
    labels = [n.night.strftime("%d %b") for n in r.nights]
    pdf.bar_chart("Bathroom visits per night", labels,
                  [None if n.activity == "no_data" else n.bathroom_visits for n in r.nights],
                  "bathroom visits between 00:00 and 06:00 ('-' = no sensor data)")
    days = [d.day.strftime("%d %b") for d in r.daily]
    pdf.bar_chart("Meals and drinks: kitchen sessions per day", days, [d.kitchen_sessions for d in r.daily],
                  "kitchen sessions (fridge, kettle, kitchen motion within 30 minutes = one session)",
                  colour=palette.NIGHT["none"].background)
    pdf.bar_chart("Time out of the home per day", days, [d.minutes_out for d in r.daily], "minutes out",
                  colour=palette.TIME_OUT)
    pdf.heading("Room temperature", 10)
    if not r.room_temperatures:
        pdf.para("No room-temperature readings in this period.", 9)
    else:
        pdf.set_font("Helvetica", "B", 8)
        widths = (50, 22, 22, 22, 32, 32)
        for w, head in zip(widths, ("Room", "Lowest", "Average", "Highest", "Hours below 18°C",
                                    "Hours above 26°C"), strict=True):
            pdf.cell(w, 5, _latin1(head), border=1)
        pdf.ln(5)
        pdf.set_font("Helvetica", size=8)
        for t in r.room_temperatures:
            for w, value in zip(widths, (t.room, f"{t.min:.1f}°C", f"{t.mean:.1f}°C", f"{t.max:.1f}°C",
                                         str(t.hours_below_18), str(t.hours_above_26)), strict=True):
                pdf.cell(w, 5, _latin1(value), border=1)
            pdf.ln(5)
    pdf.ln(3)
    pdf.para("This report shows patterns from home sensors only. It is evidence for a review with the person "
             "and their family, not a decision: talk to them and their carers before changing any care.", 8)
    return bytes(pdf.output())
