"""WCAG 2.1 AA contrast of every colour pair people read (carewatch.palette), computed, not eyeballed."""

from __future__ import annotations

import pytest

from carewatch import palette
from carewatch.palette import contrast_ratio

TEXT_AA = 4.5  # WCAG 1.4.3, normal-size text
GRAPHICS_AA = 3.0  # WCAG 1.4.11, chart lines and marks against what is behind them

SWATCHES = [(f"{group}.{name}", s) for group, table in (("NEWS2", palette.NEWS2), ("SEVERITY", palette.SEVERITY),
                                                         ("NIGHT", palette.NIGHT))
            for name, s in table.items()] + [("WARNING", palette.WARNING), ("OK", palette.OK)]


def test_contrast_formula_matches_wcag_reference_values() -> None:
    assert contrast_ratio("#000000", "#FFFFFF") == pytest.approx(21.0)
    assert contrast_ratio("#FFFFFF", "#FFFFFF") == pytest.approx(1.0)
    assert contrast_ratio("#767676", "#FFFFFF") == pytest.approx(4.54, abs=0.01)  # the well-known AA grey


@pytest.mark.parametrize(("name", "swatch"), SWATCHES, ids=[n for n, _ in SWATCHES])
def test_badge_text_meets_aa(name: str, swatch: palette.Swatch) -> None:
    assert contrast_ratio(swatch.background, swatch.text) >= TEXT_AA, name


@pytest.mark.parametrize("fill", sorted(palette.BAND_FILL.values()))
def test_chart_lines_and_text_stand_out_from_band_shading(fill: str) -> None:
    assert contrast_ratio(palette.INK, fill) >= TEXT_AA
    assert contrast_ratio(palette.BASELINE, fill) >= GRAPHICS_AA


def test_every_news2_colour_of_the_scoring_stage_has_a_swatch() -> None:
    from carewatch.scoring.clinical_response import RESPONSES, ZERO_SCORE_RESPONSE

    colours = {r.colour for r in RESPONSES.values()} | {ZERO_SCORE_RESPONSE.colour}
    assert colours <= set(palette.NEWS2)


def test_heatmap_numbers_stay_readable_across_the_ramp() -> None:
    for step in range(11):
        background = palette.mix(palette.HEAT_LOW, palette.HEAT_HIGH, step / 10)
        assert contrast_ratio(background, palette.readable_text(background)) >= TEXT_AA, background


def test_streamlit_theme_colour_takes_white_text() -> None:
    from carewatch.dashboard.serve import dashboard_command
    from carewatch.settings import Settings

    assert contrast_ratio(palette.PRIMARY, "#FFFFFF") >= TEXT_AA  # primary buttons and selected chips
    command = dashboard_command(Settings())
    assert command[command.index("--theme.primaryColor") + 1] == palette.PRIMARY


#: Marks on the white page (WCAG 1.4.11): what draws them, its colour.
GRAPHICS_ON_PAGE = [
    ("card border (ui.CSS)", palette.BORDER),
    ("time-out bars (care-package review)", palette.TIME_OUT),
    ("bathroom bars and baseline lines", palette.BASELINE),
    ("kitchen bars", palette.NIGHT["none"].background),
    ("18/26 °C lines on the room-temperature chart", palette.SEVERITY["high"].background),
    ("darkest heatmap square", palette.HEAT_HIGH),
]


def test_page_text_and_card_border() -> None:
    assert contrast_ratio(palette.INK, palette.PAGE) >= 7  # AAA for body text
    assert contrast_ratio(palette.BORDER, palette.PAGE) >= TEXT_AA  # card borders (ui.CSS), the AA grey


@pytest.mark.parametrize(("what", "colour"), GRAPHICS_ON_PAGE, ids=[w for w, _ in GRAPHICS_ON_PAGE])
def test_chart_marks_stand_out_from_the_page(what: str, colour: str) -> None:
    assert contrast_ratio(colour, palette.PAGE) >= GRAPHICS_AA, what


def test_every_palette_colour_has_a_contrast_check() -> None:
    """A colour added to the palette (where the dashboard must take its colours from) needs a check here too."""
    checked = {palette.INK, palette.PAGE, palette.PRIMARY, palette.BASELINE, palette.HEAT_LOW, palette.HEAT_HIGH,
               *palette.BAND_FILL.values(), *(c for _, c in GRAPHICS_ON_PAGE),
               *(c for _, s in SWATCHES for c in (s.background, s.text))}
    defined: set[str] = set()
    for value in vars(palette).values():
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, palette.Swatch):
                defined |= {item.background, item.text}
            elif isinstance(item, str) and item.startswith("#"):
                defined.add(item)
    assert defined - checked == set()
