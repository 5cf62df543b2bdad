"""A report page's two renderings say the same: Markdown beside its PNGs, HTML standing alone and escaped."""

import base64

from engine.report_page import Bullets, Figure, Heading, Page, Paragraph, Table


def test_markdown_and_html_carry_the_same_content_and_the_html_embeds_its_figures(tmp_path):
    png = b"\x89PNG\r\n\x1a\n not really a picture"
    (tmp_path / "plot.png").write_bytes(png)
    page = Page("Study <1>")
    page.add(
        Heading("Part"),
        Paragraph("a < b & c"),
        Bullets(["one", "two"]),
        Table(["arm", "value"], [["x", "0.5"], ["y", "0.25"]], caption="numbers"),
        Figure("plot.png", "the plot"),
    )
    md = page.markdown()
    assert md.startswith("# Study <1>\n\n## Part\n\na < b & c\n\n- one\n- two\n\nnumbers\n\n")
    assert "| arm | value |\n|---|---:|\n| x | 0.5 |\n| y | 0.25 |" in md
    assert "![the plot](plot.png)" in md
    html = page.html(tmp_path)
    assert "<title>Study &lt;1&gt;</title>" in html and "<p>a &lt; b &amp; c</p>" in html
    assert "<li>one</li><li>two</li>" in html and "<td>y</td><td>0.25</td>" in html
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
