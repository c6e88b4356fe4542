"""CAM_Stanford_Cars: class activation maps on Stanford Cars.

Train a GAP-modified AlexNet (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization") on a filtered subset of Stanford Cars, then see and score where it looks.

The core, in the order data flows through it:
    dataset       find, parse, filter and load Stanford Cars (``StanfordCarsCAM``; parts in ``data/``)
    model         the GAP network and its CAM (``AlexNetGAP``, ``load_checkpoint``)
    localization  CAM -> boxes, IoU and the weakly supervised localisation metrics
    overlay       CAM -> colour overlays (``apply_cam``)
The shell: ``train`` (loops), ``runs`` (the run folder), ``checkpoint`` (files), ``visualize``
(figures and its CLI), ``main`` (the command line), ``demo`` and ``synthetic`` (data without a
download). ``README.md`` has the code map.
"""

__version__ = "0.1.0"
