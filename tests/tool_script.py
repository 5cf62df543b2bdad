"""A maintainer script under tools/, loaded as a module for the tests that run it (tools/ is not a package)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as module ``name``, registered in sys.modules (its dataclasses look their module up),
    with tools/ on sys.path, as when the script runs, so its imports of the scripts beside it resolve."""
    if str(TOOLS) not in sys.path:
        sys.path.append(str(TOOLS))
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
