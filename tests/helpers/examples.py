"""The packages of examples/ (shout, daytime, kv, chat, mail, netstring) for the tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tomllib
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def install_examples(target: Path, *names: str) -> dict[str, str]:
    """Lay out packages of examples/ as pip installs them — the module plus a
    ``*.dist-info`` folder with its ``entry_points.txt`` — so a real ``tcpkit serve``
    finds their services as installed plug-ins; the environment to use."""
    for name in names:
        meta = tomllib.loads((EXAMPLES / name / "pyproject.toml").read_text())["project"]
        shutil.copy(EXAMPLES / name / f"{name}.py", target)
        info = target / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
        points = meta["entry-points"]["tcpkit.services"]
        (info / "entry_points.txt").write_text(
            "[tcpkit.services]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def load_example(name: str) -> ModuleType:
    """Import examples/NAME/NAME.py in this process (whether or not it is installed)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / name / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
