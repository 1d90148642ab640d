"""A real headless browser for the dashboard tests: Debian's chromium, reading the DOM it
built and taking screenshots. `.ci/run` installs chromium when it is missing.

JavaScript stays on in the browser (`--dump-dom` needs it), but the dashboard's
Content-Security-Policy forbids every script, so the pages are seen as a browser with
scripts off sees them."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,900",
]
SCREENSHOTS = Path(os.environ.get("FLOWLORD_SCREENSHOTS",
                                  Path(__file__).resolve().parent.parent / "build" / "screenshots"))


@dataclass
class Dom:
    """What the browser rendered: the serialized DOM, its visible text, links, tags."""

    html: str
    text: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text)
    tags: dict[str, int] = field(default_factory=dict)

    def link(self, text: str) -> str:
        """The href of the first link whose text is `text`."""
        for href, label in self.links:
            if label == text:
                return href
        raise AssertionError(f"no link {text!r} among {[t for _, t in self.links][:40]}")


INLINE = {"a", "span", "strong", "small", "time", "em", "b", "i", "code", "label"}


class _Reader(HTMLParser):
    """Collects the text as shown (blocks and cells apart), links and tag counts."""

    def __init__(self, dom: Dom) -> None:
        super().__init__(convert_charrefs=True)
        self.dom = dom
        self.words: list[str] = []
        self.href: str | None = None
        self.label: list[str] = []
        self.hidden = 0  # inside <title>, <style>: not shown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.dom.tags[tag] = self.dom.tags.get(tag, 0) + 1
        if tag not in INLINE:
            self.words.append(" ")
        if tag in ("title", "style"):
            self.hidden += 1
        if tag == "a":
            self.href, self.label = dict(attrs).get("href") or "", []

    def handle_endtag(self, tag: str) -> None:
        if tag not in INLINE:
            self.words.append(" ")
        if tag in ("title", "style"):
            self.hidden -= 1
        if tag == "a" and self.href is not None:
            self.dom.links.append((self.href, " ".join("".join(self.label).split())))
            self.href = None

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        self.words.append(data)
        if self.href is not None:
            self.label.append(data)


class Browser:
    def __init__(self, profile: Path) -> None:
        found = shutil.which("chromium")
        assert found, "the dashboard tests need Debian's chromium: apt-get install chromium"
        self.chromium = found
        self.profile = profile

    def _run(self, *args: str) -> str:
        done = subprocess.run([self.chromium, *FLAGS, f"--user-data-dir={self.profile}", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def load(self, url: str) -> Dom:
        """The DOM chromium built from the page at `url`."""
        dom = Dom(self._run("--dump-dom", url))
        reader = _Reader(dom)
        reader.feed(dom.html)
        dom.text = " ".join("".join(reader.words).split())
        return dom

    def screenshot(self, url: str, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        path.unlink(missing_ok=True)
        self._run(f"--screenshot={path}", url)
        assert path.stat().st_size > 10_000, f"{path} is too small to show a page"
        return path
