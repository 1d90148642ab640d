"""A real headless browser for the dashboard tests: Debian's chromium, reading the DOM it
built and taking screenshots (`Browser`), or driven through forms like a person drives it
(`Tab`). `.ci/run` installs chromium when it is missing.

JavaScript stays on in the browser (`--dump-dom` needs it), but the dashboard's
Content-Security-Policy forbids every script, so the pages are seen as a browser with
scripts off sees them."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

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


class Tab:
    """One page of a chromium driven like a person drives it: typing into fields,
    clicking buttons, reading what loaded (the DevTools protocol, over the pipe
    `--remote-debugging-pipe` opens: JSON messages ended by NUL, fd 3 in, fd 4 out).
    Cookies and the Origin of a form's POST are the browser's own."""

    def __init__(self, profile: Path, timeout: float = 30) -> None:
        found = shutil.which("chromium")
        assert found, "the dashboard tests need Debian's chromium: apt-get install chromium"
        commands_in, commands = os.pipe()
        events, events_out = os.pipe()
        # the child's 3 and 4 are made from these (by bash: dash takes one digit only),
        # so neither may be 3 or 4 already
        commands_in, events_out = (_high(fd) for fd in (commands_in, events_out))
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_in} 4>&{events_out}', found, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands_in, events_out), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(commands_in)
        os.close(events_out)
        self.commands, self.events = commands, events
        self.timeout = timeout
        self.pending: list[dict[str, Any]] = []
        self.buffer = b""
        self.last_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Page.enable", on_page=True)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self.commands)
        os.close(self.events)

    def __enter__(self) -> Tab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the protocol ---------------------------------------------------------------

    def call(self, method: str, on_page: bool = False, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if on_page:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            got = self._message()
            if got.get("id") == self.last_id:
                assert "error" not in got, (method, params, got["error"])
                result: dict[str, Any] = got["result"]
                return result
            self.pending.append(got)

    def _message(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.events], [], [], left)[0], \
                "chromium said nothing before the deadline"
            chunk = os.read(self.events, 1 << 20)
            assert chunk, "chromium closed its pipe"
            self.buffer += chunk
        text, _, self.buffer = self.buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(text)
        return found

    def _loaded(self) -> None:
        """Waits for the page's load event."""
        while True:
            got = self.pending.pop(0) if self.pending else self._message()
            if got.get("method") == "Page.loadEventFired":
                return

    def _node(self, selector: str) -> int:
        root = self.call("DOM.getDocument", on_page=True)["root"]["nodeId"]
        node = int(self.call("DOM.querySelector", on_page=True, nodeId=root,
                             selector=selector)["nodeId"])
        assert node, f"nothing on the page matches {selector}"
        return node

    # --- what a person does ---------------------------------------------------------

    def open(self, url: str) -> Dom:
        self.pending.clear()
        self.call("Page.navigate", on_page=True, url=url)
        self._loaded()
        return self.dom()

    def type(self, selector: str, text: str) -> None:
        """Types `text` into the field `selector` finds."""
        self.call("DOM.focus", on_page=True, nodeId=self._node(selector))
        self.call("Input.insertText", on_page=True, text=text)

    def choose(self, selector: str) -> None:
        """Selects the <option> (or ticks the checkbox) `selector` finds."""
        node = self._node(selector)
        name = "checked" if "checkbox" in selector else "selected"
        self.call("DOM.setAttributeValue", on_page=True, nodeId=node, name=name, value=name)

    def click(self, selector: str, navigates: bool = True) -> Dom:
        """A click in the middle of what `selector` finds (a button, a <summary>); the
        page it leads to, or this one when it `navigates` nowhere."""
        node = self._node(selector)
        self.call("DOM.scrollIntoViewIfNeeded", on_page=True, nodeId=node)
        quad = self.call("DOM.getBoxModel", on_page=True, nodeId=node)["model"]["content"]
        x, y = sum(quad[0::2]) / 4, sum(quad[1::2]) / 4
        self.pending.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", on_page=True, type=kind, x=x, y=y,
                      button="left", clickCount=1)
        if navigates:
            self._loaded()
        return self.dom()

    def dom(self) -> Dom:
        root = self.call("DOM.getDocument", on_page=True)["root"]["nodeId"]
        dom = Dom(self.call("DOM.getOuterHTML", on_page=True, nodeId=root)["outerHTML"])
        reader = _Reader(dom)
        reader.feed(dom.html)
        dom.text = " ".join("".join(reader.words).split())
        return dom

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.call("Storage.getCookies")["cookies"])

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        data = self.call("Page.captureScreenshot", on_page=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def _high(fd: int) -> int:
    """`fd` moved to a number above 9."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved
