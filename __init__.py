"""CAM_Stanford_Cars: class activation maps on Stanford Cars.

Train a GAP-modified AlexNet (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization") on a filtered subset of Stanford Cars, then see and score where it looks.

Modules, in the order data flows through them:
    dataset       find, parse, filter and load Stanford Cars (``StanfordCarsCAM``)
    synthetic     write a small synthetic Stanford Cars in the real on-disk format
    model         the GAP network, its CAM, checkpoints (``AlexNetGAP``, ``load_checkpoint``)
    localization  CAM -> boxes, IoU and the weakly supervised localisation metrics
    visualize     overlays and figures (``apply_cam``, ``visualize_cam``)
    train         training and evaluation loops
"""

__version__ = "0.1.0"
