"""/metrics with several workers: a metrics file still being created never breaks a scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from mailward.runtime import SettledFilesCollector


def test_an_empty_worker_file_is_skipped_and_the_others_are_served(tmp_path: Path) -> None:
    # A settled file from "worker 101" with one counter sample ...
    settled = MmapedDict(str(tmp_path / "counter_101.db"))
    settled.write_value(mmap_key("mailward_x", "mailward_x_total", [], [], "help text"), 3.0, 0.0)
    settled.close()
    # ... and the file a new worker has created but not sized yet.
    (tmp_path / "counter_102.db").write_bytes(b"")
    registry = CollectorRegistry()
    SettledFilesCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert "mailward_x_total 3.0" in text
