"""The widths the UI is checked at (a laptop and a phone, issue 19) and the check that a
page fits its window."""

import pytest

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# A test that takes `viewport` runs at both: new_page(viewport).
both_widths = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])


def no_sideways_overflow(page) -> None:
    """The page is no wider than its window: nothing to pan sideways to (a wide table
    scrolls inside its own box)."""
    scroll, client = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll <= client, f"{page.url}: {scroll} px wide in a {client} px window"
