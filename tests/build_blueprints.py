"""Regenerate subgraphs/*.json, the pack's subgraph blueprints, from ``blueprint_specs`` and the shipped
workflows.

Run from the repository root with a host's test environment:
``COMFYUI_PATH=<ComfyUI> .venvs/comfyui-0.33.0/bin/python tests/build_blueprints.py``.
It boots ComfyUI in-process (CPU) only to read the widget input types of the nodes inside; the files are the
same bytes on every run (``host/test_blueprints.py`` checks that the shipped ones are).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import blueprint_specs  # noqa: E402
import comfy_host  # noqa: E402
from conftest import CACHE_DIR  # noqa: E402


def main() -> None:
    comfy_host.boot(Path(tempfile.mkdtemp(prefix="pnp-blueprints-")), CACHE_DIR / "checkpoints")
    blueprint_specs.SUBGRAPHS.mkdir(exist_ok=True)
    for spec in blueprint_specs.BLUEPRINTS:
        path = blueprint_specs.SUBGRAPHS / f"{spec['name']}.json"
        path.write_text(blueprint_specs.file_text(blueprint_specs.build(spec, blueprint_specs.host_widget_types)),
                        encoding="utf-8")
        print(f"wrote {path.relative_to(blueprint_specs.PACK_ROOT)}")


if __name__ == "__main__":
    main()
