"""The installed environment itself: one owner per file."""

from __future__ import annotations

from collections import defaultdict
from importlib import metadata


def test_no_two_installed_distributions_write_the_same_file():
    """Two distributions owning one file (onnxruntime beside onnxruntime-gpu, say) overwrite
    each other file by file, leaving whichever installed last, in part."""
    owners: dict[str, set[str]] = defaultdict(set)
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        for path in distribution.files or ():
            text = str(path)
            code = text.endswith((".py", ".so")) or ".so." in text
            if code and ".dist-info" not in text and "__pycache__" not in text:
                owners[text].add(name.lower())
    shared = {path: names for path, names in owners.items() if len(names) > 1}
    assert not shared, dict(list(shared.items())[:10])
