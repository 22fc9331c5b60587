"""Documents to sections: a heading path and the paragraphs under it (Markdown, plain text, HTML, PDF).

Headings matter twice: a passage never spans two sections, and its heading goes with it into the
index and the prompt ("Returns > Refunds"), so a short paragraph keeps its subject.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser


class ExtractError(ValueError):
    """A document whose text cannot be read (a broken PDF, a scanned one with no text layer)."""


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)


class Outline:
    """Sections as a document is read: headings nest by level; paragraphs join the current section."""

    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.sections: list[Section] = [Section("")]

    def heading(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            return
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, title))
        self.sections.append(Section(" > ".join(t for _, t in self.path)))

    def paragraph(self, text: str) -> None:
        text = " ".join(text.split())
        if text:
            self.sections[-1].paragraphs.append(text)

    def result(self) -> list[Section]:
        return [s for s in self.sections if s.paragraphs]


ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}")


def _inline_markdown(line: str) -> str:
    line = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", line)  # images: their alt text
    line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)  # links: their text
    line = re.sub(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1", r"\2", line)
    return line.replace("|", " ").strip()


def markdown(text: str) -> list[Section]:
    outline = Outline()
    block: list[str] = []
    fenced = False

    def flush() -> None:
        outline.paragraph(" ".join(block))
        block.clear()

    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else ATX.match(line)
        if heading:
            flush()
            outline.heading(len(heading.group(1)), _inline_markdown(heading.group(2)))
        elif not line.strip() or TABLE_RULE.match(line):
            flush()
        elif LIST_ITEM.match(line) or line.lstrip().startswith("|"):
            flush()  # a list item or table row is a paragraph of its own
            block.append(_inline_markdown(LIST_ITEM.sub("", line)))
            flush()
        else:
            block.append(_inline_markdown(line))
    flush()
    return outline.result()


def plain(text: str) -> list[Section]:
    """Paragraphs are separated by blank lines; a short line ending in ':' or standing alone in capitals
    before a paragraph reads as a heading."""
    outline = Outline()
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        first = lines[0]
        if len(lines) > 1 and len(first) <= 80 and (first.endswith(":") or first.isupper()):
            outline.heading(1, first.rstrip(":"))
            lines = lines[1:]
        elif len(lines) == 1 and len(first) <= 60 and first.endswith(":"):
            outline.heading(1, first.rstrip(":"))
            continue
        outline.paragraph(" ".join(lines))
    return outline.result()


class _Html(HTMLParser):
    BLOCKS = frozenset({"p", "li", "div", "td", "th", "tr", "br", "section", "article", "dd", "dt", "blockquote",
                        "pre", "table", "ul", "ol", "body", "main", "header", "footer"})
    SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.outline = Outline()
        self.text: list[str] = []
        self.heading_level = 0
        self.skipping = 0

    def _flush(self) -> None:
        content = " ".join("".join(self.text).split())
        self.text.clear()
        if not content:
            return
        if self.heading_level:
            self.outline.heading(self.heading_level, content)
        else:
            self.outline.paragraph(content)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = 0
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.text.append(data)


def html(text: str) -> list[Section]:
    parser = _Html()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.outline.result()


def pdf(data: bytes) -> list[Section]:
    """The text layer of every page, read as plain text (pypdf, pure Python)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise ExtractError(f"the PDF cannot be read: {exc}") from exc
    return plain("\n\n".join(pages))


def sections(kind: str, data: bytes) -> list[Section]:
    if kind == "pdf":
        found = pdf(data)
    else:
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ExtractError(f"the document is not UTF-8 text (byte {exc.start})") from exc
        found = {"markdown": markdown, "html": html}.get(kind, plain)(content)
    if not found:
        raise ExtractError("the document has no text to index (a scanned PDF has no text layer)")
    return found
