"""Make ``CAM_Stanford_Cars`` importable when one of its files is run as a script.

``python path/to/clone/main.py`` puts the clone's folder on ``sys.path``, but the package is the clone itself, whatever
the folder is called: registering the folder under the package's name keeps every module's relative imports, once each.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "CAM_Stanford_Cars"


def ensure_package() -> None:
    """Import this folder as ``CAM_Stanford_Cars`` unless that name already points here, and take the folder off
    ``sys.path`` so that no other library's ``import train`` or ``import model`` finds this project's files."""
    root = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != root]
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and Path(loaded.__file__).resolve().parent == root:
        return
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
