"""Local output folders replaced whole, so a reader never finds half of a new export or a file left from an old one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path


def safe_name(text: str) -> str:
    """``text`` as a file or folder name that Spark's paths also take: runs of anything but letters, digits, ``_``,
    ``.`` and ``-`` become one ``-`` (Airflow's run ids hold ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def replace_folder(staged: Path, target: Path) -> None:
    """Put the complete folder ``staged`` in the place of ``target`` (two renames on one file system); what
    ``target`` held before is deleted, never mixed with the new files."""
    old = target.with_name(f".{target.name}-replaced")
    shutil.rmtree(old, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
