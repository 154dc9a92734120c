"""Every Python example in the README runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        namespace: dict[str, object] = {"__name__": "readme"}
        exec(compile(block, str(README), "exec"), namespace)
        res = namespace.get("res")
        if res is not None:
            assert res.robust_accuracy < res.clean_accuracy
