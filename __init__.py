"""CAM_Stanford_Cars: class activation maps on Stanford Cars.

Train a GAP-modified AlexNet (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization") on a filtered subset of Stanford Cars, then see and score where it looks.

The core, in the order data flows through it:
    dataset       find, parse, filter and load Stanford Cars (``StanfordCarsCAM``; parts in ``data/``)
    model         the GAP networks and their CAM (``AlexNetGAP``, ``create_model``, ``load_checkpoint``)
    cams          the CAM methods side by side (``compute_cams``) and RISE deletion/insertion
    localization  CAM -> boxes, IoU, the weakly supervised localisation metrics (``wsolevaluation``: clovaai's, exactly)
    overlay       CAM -> colour overlays (``apply_cam``)
The shell: ``scoring`` (the one loop over the data), ``train`` (training), ``run_folder`` (a run's files),
``checkpoint`` (files), ``visualize`` (figures and its CLI), ``photos`` (your own photos explained), ``compare``
(methods side by side), ``report`` (the HTML report), ``main`` (the command line), ``demo`` and ``synthetic`` (data
without a download). ``README.md`` has the code map.
"""

import importlib

HOMES = {"METHODS": "cams", "compute_cams": "cams", "deletion_insertion": "cams", "explain_photos": "photos"}
__all__ = list(HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # On first use, not at import: importing torch here would fix OpenMP's settings before main.py sets them.
    if name in HOMES:
        return getattr(importlib.import_module(f".{HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
