"""A report page as a list of blocks, written twice from the same content: Markdown (read beside its PNGs, or on
GitHub) and one self-contained HTML file (its figures inline as data URIs), which a person opens, prints or
mails without the folder around it. A study report is written once, as blocks; neither rendering can say what
the other does not.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    """A header and rows of cell strings; every column but the first is right-aligned (they hold numbers)."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG beside the page (``file`` relative to the page's folder)."""

    file: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Figure


def markdown(blocks: list[Block]) -> str:
    """Blocks as Markdown, a blank line between them (also a section of a larger page: README, docs/results.md)."""
    parts = []
    for b in blocks:
        match b:
            case Heading():
                parts.append(f"{'#' * b.level} {b.text}")
            case Paragraph():
                parts.append(b.text)
            case Bullets():
                parts.append("\n".join(f"- {item}" for item in b.items))
            case Table():
                lines = [
                    "| " + " | ".join(b.header) + " |",
                    "|---|" + "---:|" * (len(b.header) - 1),
                    *("| " + " | ".join(row) + " |" for row in b.rows),
                ]
                parts.append((f"{b.caption}\n\n" if b.caption else "") + "\n".join(lines))
            case Figure():
                parts.append(f"![{b.caption}]({b.file})\n\n*{b.caption}*")
    return "\n\n".join(parts) + "\n"


@dataclass
class Page:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def markdown(self) -> str:
        """The page as Markdown: figures as image links to the PNGs beside it."""
        return markdown([Heading(self.title, level=1), *self.blocks])

    def html(self, folder: Path) -> str:
        """The page as one HTML file: every figure read from ``folder`` and embedded, so the file stands alone."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            match b:
                case Heading():
                    body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
                case Paragraph():
                    body.append(f"<p>{e(b.text)}</p>")
                case Bullets():
                    body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b.items) + "</ul>")
                case Table():
                    head = "".join(f"<th>{e(h)}</th>" for h in b.header)
                    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
                    caption = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
                    body.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
                case Figure():
                    data = base64.b64encode((folder / b.file).read_bytes()).decode()
                    body.append(
                        f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                        f"<figcaption>{e(b.caption)}</figcaption></figure>"
                    )
        return (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(self.title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em}"
    "td:not(:first-child),th:not(:first-child){text-align:right}caption{text-align:left;padding:.3em 0}"
    "img{max-width:100%}figcaption{font-style:italic;color:#444}"
)
