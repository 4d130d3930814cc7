"""`rh report`: the page of a finished folder, its refusals, an older folder's page, and the page in real Chromium.

Folders: one fake demo per module (test_demo's fakes: NIAH collapses under top:K, ~5 s) for the page's content and
refusals, and the session's tiny-llama demo (conftest ``tiny_demo``, shared with test_demo) for the browser check of
a page a real run wrote. Browser tests (``browser``) need Debian's chromium and Playwright (tests/browser.py): they
skip, saying why, where either is missing, and fail instead under RH_REQUIRE_BROWSER=1 (.ci/run sets it).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from test_demo import _demo, install_fakes

import browser
from rh_eval.cli import main
from rh_eval.report import REPORT_FILE, render_report

MAX_BYTES = 3_000_000  # the demo's page (issue 29)


@pytest.fixture(scope="module")
def fake_demo(tmp_path_factory) -> Path:
    """A finished fake ``rh demo`` folder (full, retrieval@2, random@2 over 2 seeds; NIAH, a CoT pair)."""
    out = tmp_path_factory.mktemp("fake-demo") / "out"
    with pytest.MonkeyPatch.context() as patch:
        install_fakes(patch)
        assert _demo(out) == 0
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ------------------------------------------------------------------------------------------------ the page


def test_the_demo_writes_the_page_and_rh_report_rebuilds_the_same(fake_demo, tmp_path, capsys):
    folder = _copy(fake_demo, tmp_path)
    page = (folder / REPORT_FILE).read_text(encoding="utf-8")
    assert len(page.encode()) < MAX_BYTES
    assert "What happens to rh_niah_paper, t_cot, t when heads of fake" in page
    assert "Heads are ranked by their retrieval scores in head_scores.json" in page
    assert "expected shape holds" in page and "CoT vs direct (exact_match)" in page  # the verdicts in words
    assert "retrieval@2 vs random@2" in page  # the paired tests
    # every figure of plots/ embedded, none fetched: one file, no network
    assert page.count('<img src="data:image/png;base64,') == len(list((folder / "plots").glob("*.png"))) > 10
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    # per condition: its heads, and links to its lm-eval files that resolve from the page's folder
    links = re.findall(r'href="(conditions/[^"]+)"', page)
    assert len(links) == 4 * 4 and all((folder / link).is_file() for link in links)  # results + 3 samples files
    assert "<code>0-1 1-2</code>" in page  # retrieval@2: the demo's own top-2
    # provenance: the command line, its start, wall time and machine (this process's: pytest's command line)
    state = json.loads((folder / "demo.json").read_text())
    run = state["runs"][0]
    assert run["command"] in page.replace("&#39;", "'") and run["started"] in page and run["machine"]["cpu"] in page

    (folder / REPORT_FILE).unlink()
    assert main(["report", str(folder)]) == 0
    assert f"rh report: wrote {folder / REPORT_FILE}" in capsys.readouterr().out
    assert (folder / REPORT_FILE).read_text(encoding="utf-8") == page  # a pure function of the folder


@pytest.mark.parametrize("remove, lacking", [
    (["leaderboard.json"], "lacks leaderboard.json (the numbers): "),
    (["leaderboard.json", "run.json"], "lacks leaderboard.json (the numbers) and run.json (the settings"),
])
def test_a_folder_without_what_the_page_needs_is_one_line(fake_demo, tmp_path, capsys, remove, lacking):
    folder = _copy(fake_demo, tmp_path)
    for name in remove:
        (folder / name).unlink()
    (folder / REPORT_FILE).unlink()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and lacking in err and not (folder / REPORT_FILE).exists()
    assert main(["report", str(folder / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _as_version_1(folder: Path) -> dict:
    """leaderboard.json as releases before per-document intervals wrote it (format 1: no tests, no methods)."""
    path = folder / "leaderboard.json"
    board = json.loads(path.read_text())
    old = {key: value for key, value in board.items() if key not in ("tests", "interval_methods", "n_docs")}
    path.write_text(json.dumps({**old, "version": 1}))
    return board


def test_an_older_leaderboard_is_rebuilt_from_the_conditions_or_refused_in_one_line(fake_demo, tmp_path, capsys):
    folder = _copy(fake_demo, tmp_path)
    board = _as_version_1(folder)
    page = render_report(folder)
    assert "leaderboard.json is format version 1" in page and "rebuilt from conditions/" in page
    assert "retrieval@2 vs random@2" in page  # the paired tests, recomputed from the samples
    for row, values in board["values"].items():  # the same values as the board the run wrote
        for column, value in values.items():
            assert f'data-value="{value}" data-column="{column}"' in page, (row, column)
    (folder / "conditions" / "random@2-seed1" / "results.json").unlink()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "format version 1" in err and "random@2-seed1 lacks the results.json" in err


# --------------------------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def chromium():
    browser.require()
    with browser.chromium() as context:
        yield context


def test_without_a_browser_the_tests_skip_saying_why_but_fail_where_required(monkeypatch):
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.delenv(browser.REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no /nonexistent/chromium .*apt-get install chromium"):
        browser.require()
    monkeypatch.setenv(browser.REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="RH_REQUIRE_BROWSER=1 but no /nonexistent/chromium"):
        browser.require()


def _check_in_chromium(context, folder: Path) -> browser.Visit:
    """What the issue asks of the page in a real browser; returns the visit for more checks."""
    page_file = folder / REPORT_FILE
    assert page_file.stat().st_size < MAX_BYTES
    visit = browser.open_page(context, page_file)
    page = visit.page
    assert visit.errors == []  # no console errors, page errors or failed requests
    assert all(url.startswith(("file:", "data:")) for url in visit.requests), visit.requests  # no network
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(images) == len(list((folder / "plots").glob("*.png"))) > 0
    assert all(complete and width > 0 for complete, width in images), images  # every figure decoded
    board = json.loads((folder / "leaderboard.json").read_text())
    shown = set()
    for table in ("#leaderboard-table", "#leaderboard-all"):
        rows = page.eval_on_selector_all(f"{table} tbody tr", """rows => rows.map(r => [r.dataset.row,
            [...r.querySelectorAll('td[data-column]')].map(td => [td.dataset.column, td.dataset.value, td.textContent])])""")
        assert [name for name, _ in rows] == [row["name"] for row in board["rows"]]  # one row per leaderboard row
        for name, cells in rows:
            for column, value, text in cells:
                assert float(value) == board["values"][name][column], (name, column)  # leaderboard.json's value
                assert text.startswith(f"{board['values'][name][column]:.3f}"), (name, column, text)
                shown.add(column)
    assert shown == {column["id"] for column in board["columns"]}
    # a laptop's width: no sideways scrolling of the page (wide tables scroll in their own box); printing hides nav
    assert page.evaluate("document.documentElement.scrollWidth") <= browser.LAPTOP["width"]
    page.emulate_media(media="print")
    assert page.eval_on_selector("nav", "e => getComputedStyle(e).display") == "none"
    page.emulate_media(media="screen")
    return visit


def _not_blank(png: bytes) -> float:
    """The share of a screenshot's pixels that are not the background's colour."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    background = max(image.getcolors(1 << 16))[1]
    return 1 - image.histogram()[background] / (image.width * image.height)


@pytest.mark.browser
def test_the_page_in_chromium_fake_demo(chromium, fake_demo):
    visit = _check_in_chromium(chromium, fake_demo)
    page, column = visit.page, "rh_niah_paper/score,none"
    header = page.locator("#leaderboard-table th", has_text="rh_niah_paper score")
    values = f"[...document.querySelectorAll('#leaderboard-table td[data-column=\"{column}\"]')].map(td => +td.dataset.value)"
    written = page.evaluate(values)  # the board's order: full 0.8, retrieval@2 0.1, random@2 0.725
    header.click()
    assert page.evaluate(values) == sorted(written) != written
    header.click()
    assert page.evaluate(values) == sorted(written, reverse=True)


@pytest.mark.browser
@pytest.mark.smollm
def test_the_tiny_demo_page_in_chromium(chromium, tiny_demo, tmp_path):
    folder, _, _ = tiny_demo
    _check_in_chromium(chromium, folder)
    # the README's screenshot, as `python tests/browser.py REPORT PNG` takes it (docs/report.md): not blank
    shot = tmp_path / "report.png"
    assert browser.screenshot(chromium, folder / REPORT_FILE, shot).errors == []
    assert _not_blank(shot.read_bytes()) > 0.05, "the screenshot is (nearly) blank"


def test_the_page_escapes_what_the_run_recorded(fake_demo, tmp_path):
    """Text from the run's files (a command line, a model path) is text on the page, never markup: a command line
    with ``<`` and ``&`` (a shell redirect, a metadata string) reads as typed."""
    from rh_eval.report import render_report

    folder = _copy(fake_demo, tmp_path)
    state = json.loads((folder / "demo.json").read_text())
    state["runs"][0]["command"] = "rh demo --output-dir out <in.txt && echo '<b>done</b>'"
    (folder / "demo.json").write_text(json.dumps(state))
    page = render_report(folder)
    assert "&lt;in.txt &amp;&amp; echo &#39;&lt;b&gt;done&lt;/b&gt;&#39;" in page
    assert "<b>done</b>" not in page and "<table" in page and "<script" in page  # the page's own markup stays
