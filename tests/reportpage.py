"""The parts of a `loadgen report` page the tests read: image ids and attributes, the header
table and the per-target table's cells."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """The ids of the page's images and the text of the per-target table's cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: dict[str, dict[str, str | None]] = {}
        self.rows: list[list[str]] = []
        self.header: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images[str(a["id"])] = a
        elif tag == "table":
            self._table = a.get("id")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "tr":
            self._row = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._table == "targets" and self._row[0] != "#":
            self.rows.append(self._row)
        elif tag == "tr" and self._table == "header":
            self.header[self._row[0]] = self._row[1]
