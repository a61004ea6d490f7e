"""The training loop's progress bar."""

from __future__ import annotations

from collections.abc import Iterator


def progress_bar(enabled: bool, start: int, total: int) -> Iterator[None]:
    """A tqdm bar when tqdm is there and wanted; otherwise nothing."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        enabled = False
    if not enabled:
        while True:
            yield None
    with tqdm(total=total, initial=start, unit="step") as bar:
        while True:
            bar.update(1)
            yield None
