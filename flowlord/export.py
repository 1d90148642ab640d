"""`flowlord export`: the stored workflows written back to TOML, one file per workflow
key, so that the database is never the only copy of a workflow. Loaded again, an
exported file yields the same phase rows."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import PurePosixPath

import tomli_w

from flowlord.model import Phase
from flowlord.store import Store


class ExportError(Exception):
    """str(e) is one line for people."""


def phase_table(phase: Phase) -> dict[str, object]:
    """A phase as its `[[phase]]` table, with flowlord's key names; empty keys left out."""
    table: dict[str, object] = {"task": phase.task}
    if phase.depends_on:
        table["dependsOn"] = phase.depends_on
    if phase.rule:
        table["rule"] = phase.rule
    if phase.retry:
        table["retry"] = phase.retry
    if phase.template:
        table["template"] = phase.template
    return table


def file_text(phases: Sequence[Phase]) -> str:
    return tomli_w.dumps({"phase": [phase_table(p) for p in phases]}) if phases else ""


def safe_key(key: str) -> bool:
    """A key that names a file under the output directory: relative, no `..`."""
    path = PurePosixPath(key)
    return bool(key) and not path.is_absolute() and ".." not in path.parts and "\0" not in key


def export(store: Store, out: str) -> list[str]:
    """Write every stored workflow file under `out`; the keys written. A key that could
    reach outside `out` (written by hand into the database) is refused."""
    keys = [f[0] for f in store.files()]
    phases: dict[str, list[Phase]] = {key: [] for key in keys}
    for phase in store.phases():
        phases.setdefault(phase.file_path, []).append(phase)
    bad = [key for key in phases if not safe_key(key)]
    if bad:
        raise ExportError(f"workflow key outside the output directory: {bad[0]!r}")
    for key, rows in sorted(phases.items()):
        target = os.path.join(out, key)
        os.makedirs(os.path.dirname(target) or out, exist_ok=True)
        # whole or not at all: a temporary file beside it, then renamed over it
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or out, prefix=".export-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(file_text(sorted(rows, key=lambda p: p.position)))
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return sorted(phases)
