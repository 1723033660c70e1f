"""`batchinfer report` as a real subprocess: from a results file (HTML and Markdown, the
numbers of the hand-computed fixture, hostile strings escaped), the HTML opened in
Debian's headless Chromium, and the exit codes of the CLI's one rule."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.gateway.test_cli_faults import acli, assert_one_clear_line, cli
from tests.report.chromium import dump_dom, screenshot
from tests.report.fixtures import EXPECTED, HOSTILE, classify_eval, text_eval, write_lines

pytestmark = pytest.mark.timeout(180)
PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The model rows (their cells' text) and the images of a report page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.images: list[dict[str, str]] = []
        self.example_cells: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_examples = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "tr" and found.get("class") in ("model", "example"):
            self._row, self._in_examples = [], found["class"] == "example"
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(found)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._in_examples:
                self.example_cells += self._row
            else:
                self.rows[self._row[0]] = self._row
            self._row = None


def png_of(image: dict[str, str]) -> bytes:
    prefix = "data:image/png;base64,"
    assert image["src"].startswith(prefix)
    return base64.b64decode(image["src"][len(prefix) :], validate=True)


@pytest.fixture
def text_results(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "results.jsonl", text_eval())


def test_an_html_report_from_a_file_has_the_hand_computed_table_and_its_charts(
    text_results, tmp_path
):
    report = tmp_path / "out" / "report.html"
    ran = cli("report", "--from-file", str(text_results), "-o", str(report))
    assert ran.code == 3, ran.stderr  # smol has a failed task: exit as `results` would
    page = Page(report.read_text())
    assert page.rows == EXPECTED
    charts = {image["data-chart"] for image in page.images}
    assert charts == {"metrics", "latency", "throughput"}
    assert all(png_of(image).startswith(PNG) for image in page.images)
    assert f"report: {report}" in ran.stderr


def test_hostile_strings_appear_escaped(text_results, tmp_path):
    report = tmp_path / "report.html"
    cli("report", "--from-file", str(text_results), "-o", str(report))
    text = report.read_text()
    assert "<script>" not in text and "onerror=alert(1)>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert HOSTILE in Page(text).example_cells  # shown as the text it was
    markdown = tmp_path / "report.md"
    cli("report", "--from-file", str(text_results), "-o", str(markdown))
    md = markdown.read_text()
    assert "<script>" not in md and "<img" not in md and "[x](" not in md
    table_rows = [row for row in md.splitlines() if row.startswith("| 3 | r4@tiny")]
    assert len(table_rows) == 1 and table_rows[0].count(" | ") == 6  # the | stayed in its cell


def test_a_markdown_report_has_the_table_examples_and_its_chart_files(tmp_path):
    results = write_lines(tmp_path / "classify.jsonl", classify_eval())
    report = tmp_path / "eval.md"
    ran = cli("report", "--from-file", str(results), "-o", str(report), "--examples", "2")
    assert ran.code == 0, ran.stderr
    md = report.read_text()
    assert "| a | 4 | 4 | 0 | 0 | 0.5 | 0.3889 | 10.0 | 10.0 | 6.667 | 1.333 |" in md
    assert "| b | 4 | 4 | 0 | 0 | 1 | 1 | 10.0 | 10.0 | 6.667 | 1.333 |" in md
    worst_a = re.findall(r"^\| \d \| (r\d@a) ", md, re.MULTILINE)
    assert worst_a == ["r1@a", "r3@a"]  # both wrong, in the order they came
    linked = re.findall(r"!\[[^\]]*\]\(<([^>]+)>\)", md)
    expected = ["metrics", "latency", "throughput", "confusion-1", "confusion-2"]
    assert linked == [f"eval-{name}.png" for name in expected]
    for name in linked:
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_the_html_report_in_headless_chromium(tmp_path):
    results = write_lines(tmp_path / "classify.jsonl", classify_eval() + text_eval())
    report = tmp_path / "report.html"
    ran = cli("report", "--from-file", str(results), "-o", str(report))
    assert ran.code == 3, ran.stderr
    dom = Page(dump_dom(report, tmp_path))
    assert set(dom.rows) == {"a", "b", "smol", "tiny"}
    assert dom.rows["smol"][1:4] == ["4", "3", "1"]
    charts = [image["data-chart"] for image in dom.images]
    assert charts == ["metrics", "latency", "throughput", "confusion", "confusion"]
    assert all(png_of(image).startswith(PNG) for image in dom.images)
    shot = screenshot(report, tmp_path / "shot.png", tmp_path)
    assert shot.startswith(PNG)
    colours = _colours(tmp_path / "shot.png")
    assert len(colours) > 20, colours  # text, tables and charts: not a blank page


def _colours(png: Path) -> set[tuple[int, ...]]:
    from matplotlib import image

    pixels = image.imread(png)
    step = max(1, pixels.shape[0] // 400)
    return {tuple(int(c * 255) for c in pixel[:3]) for row in pixels[::step] for pixel in row[::8]}


@pytest.mark.parametrize(
    "args, words",
    [
        ([], ["JOB id or --from-file"]),
        (["j1", "--from-file", "x.jsonl"], ["one of them"]),
        (["--from-file", "missing.jsonl"], ["cannot read missing.jsonl"]),
        (["--from-file", "RESULTS", "--format", "pdf"], ["--format must be html or md"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, words, text_results):
    ran = cli("report", *[str(text_results) if a == "RESULTS" else a for a in args])
    assert ran.code == 2, ran.stderr
    assert_one_clear_line(ran, *words)


def test_a_results_file_with_a_bad_line_exits_2_naming_it(tmp_path):
    results = tmp_path / "bad.jsonl"
    results.write_text('{"id": "a", "status": "succeeded"}\nnot json\n')
    ran = cli("report", "--from-file", str(results), "-o", str(tmp_path / "r.html"))
    assert ran.code == 2
    assert_one_clear_line(ran, "line 2", "not JSON")
    assert not (tmp_path / "r.html").exists()


def test_an_unreachable_gateway_exits_1(down, tmp_path):
    ran = cli("report", "j1", "-g", down, "--timeout", "0", "-o", str(tmp_path / "r.html"))
    assert ran.code == 1
    assert_one_clear_line(ran, down, "connection refused", "is it running?")
    assert not (tmp_path / "r.html").exists()


async def test_an_unknown_job_exits_1(fleet, tmp_path):
    from tests.gateway.fake_server import Script

    await fleet.start([Script()])
    ran = await acli("report", "nojob", "-g", fleet.gateway.address, "-o", str(tmp_path / "r.html"))
    assert ran.code == 1
    assert_one_clear_line(ran, "job nojob not found", fleet.gateway.address)
    assert not (tmp_path / "r.html").exists()
