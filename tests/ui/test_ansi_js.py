"""The log view's ANSI renderer (primary/ui/static/ansi.js), a pure function, run in the
same headless Chromium the UI tests use, on a blank page (no primary needed)."""

import random
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS

from primary.ui import ansi_state

ANSI_JS = Path(__file__).resolve().parents[2] / "primary" / "ui" / "static" / "ansi.js"


@pytest.fixture(scope="module")
def render(playwright_driver):
    """render(chunks) -> [[text, classes], ...]: the chunks fed one after another, with
    the state carried between them, as the run page does."""
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.set_content("<!doctype html><title>ansi</title>")
    page.add_script_tag(path=str(ANSI_JS))

    def run(chunks: list[str]) -> list[list[str]]:
        return page.evaluate(
            """(chunks) => {
                let state = cifleetAnsi.fresh();
                const out = [];
                for (const chunk of chunks) {
                    const result = cifleetAnsi.segments(chunk, state);
                    state = result.state;
                    for (const s of result.segments) {
                        const row = [s.text, cifleetAnsi.classes(s)];
                        const c = cifleetAnsi.colours(s);
                        if (c.color || c.backgroundColor) row.push(JSON.stringify(c));
                        out.push(row);
                    }
                }
                return out;
            }""",
            chunks,
        )

    yield run
    browser.close()


def test_plain_text_is_one_plain_segment(render):
    assert render(["hello <b>&amp;</b>\n"]) == [["hello <b>&amp;</b>\n", ""]]


def test_colours_bold_and_reset(render):
    text = "a\x1b[31mred\x1b[1mbold red\x1b[0m plain \x1b[1;92mbright\x1b[22m thin\x1b[39m end"
    assert render([text]) == [
        ["a", ""],
        ["red", "ansi-fg-31"],
        ["bold red", "ansi-fg-31 ansi-bold"],
        [" plain ", ""],
        ["bright", "ansi-fg-92 ansi-bold"],
        [" thin", "ansi-fg-92"],
        [" end", ""],
    ]


def test_an_empty_sgr_resets(render):
    assert render(["\x1b[34mblue\x1b[mplain"]) == [["blue", "ansi-fg-34"], ["plain", ""]]


def test_other_escapes_are_dropped(render):
    text = (
        "\x1b[2K\x1b[1Gcleared"  # erase line, cursor column
        "\x1b]0;window title\x07 title"  # OSC ended by BEL
        " \x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\"  # OSC 8 hyperlink ended by ST
        "\x1b(B charset\x1bc reset\x1b[?25l hidden cursor"
    )
    assert render([text]) == [["cleared title link charset reset hidden cursor", ""]]


def test_extended_colour_arguments_are_not_taken_for_codes(render):
    # 38;2;30;... is an RGB colour: its 30 must not turn the text black; 38;5;31 likewise.
    assert render(["\x1b[38;2;30;40;50mrgb\x1b[38;5;31m 256\x1b[0;33m yellow"]) == [
        ["rgb", "", '{"color":"#1e2832"}'],
        [" 256", "", '{"color":"#0087af"}'],
        [" yellow", "ansi-fg-33"],
    ]


def test_backgrounds_underline_and_the_first_16_of_256_as_theme_colours(render):
    text = (
        "\x1b[4;41munder red\x1b[24;49m plain\x1b[38;5;1;48;5;9m theme"
        "\x1b[48;5;232m grey\x1b[0m reset\x1b[48;2;300;0;0m bad rgb"
    )
    assert render([text]) == [
        ["under red", "ansi-bg-41 ansi-underline"],
        [" plain", ""],
        [" theme", "ansi-fg-31 ansi-bg-101"],
        [" grey", "ansi-fg-31", '{"backgroundColor":"#080808"}'],
        [" reset bad rgb", ""],
    ]


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_sequence_split_across_chunks_is_joined(render, cut):
    text = "one\x1b[1;31mtwo\x1b[0mthree"
    joined = render([text])
    split = render([text[:cut], text[cut:]])
    merged: list[list[str]] = []
    for piece, classes in split:
        if merged and merged[-1][1] == classes:
            merged[-1][0] += piece
        else:
            merged.append([piece, classes])
    assert merged == joined == [["one", ""], ["two", "ansi-fg-31 ansi-bold"], ["three", ""]]


def test_the_style_carries_over_to_the_next_chunk(render):
    assert render(["\x1b[35mpurple ", "still purple\x1b[0m", " plain"]) == [
        ["purple ", "ansi-fg-35"],
        ["still purple", "ansi-fg-35"],
        [" plain", ""],
    ]


def test_an_endless_unfinished_sequence_is_not_held_forever(render):
    text = "\x1b]" + "x" * 300
    assert render([text]) == [["]" + "x" * 300, ""]]


def _random_log(rng: random.Random, pieces: int) -> str:
    """Text with SGR sequences of every kind ansi.js reads, and some it drops."""
    codes = ["0", "", "1", "22", "4", "24", "39", "49", "31", "97", "44", "107", "38;5;208"]
    codes += ["48;5;3", "38;2;1;2;3", "38;5", "48;2;9", "58;5;1", "7", "007", "1;31;4"]
    out = []
    for _ in range(pieces):
        kind = rng.random()
        if kind < 0.6:
            out.append(f"\x1b[{';'.join(rng.choices(codes, k=rng.randint(1, 3)))}m")
        elif kind < 0.7:
            out.append(rng.choice(["\x1b[2K", "\x1b]0;title\x07", "\x1b(B", "\x1b[?25l"]))
        else:
            out.append(rng.choice(["text ", "line\n", "\r", "\x1b[m\n"]))
    return "".join(out)


def test_the_primarys_colours_at_an_offset_are_the_renderers_state_there(playwright_driver):
    """primary/ui/ansi_state.py, read backwards in small windows, gives the state ansi.js
    holds after reading the same text from its start (the run page starts "Load earlier",
    a search result and a long log's tail with it)."""
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page()
        page.set_content("<!doctype html><title>ansi</title>")
        page.add_script_tag(path=str(ANSI_JS))
        rng = random.Random(19)
        texts = [_random_log(rng, rng.randint(0, 40)) for _ in range(300)]
        expected = page.evaluate(
            """(texts) => texts.map((text) => {
                const { pending, ...state } = cifleetAnsi.segments(text, cifleetAnsi.fresh()).state;
                return state;
            })""",
            texts,
        )
    finally:
        browser.close()
    for text, state in zip(texts, expected, strict=True):
        data = text.encode()
        for window in (3, 7, 1 << 20):
            got = ansi_state.state_before(lambda s, n, d=data: d[s : s + n], len(data), window)
            assert got == state, (text, window)
