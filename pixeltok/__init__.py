"""pixeltok: how vision models scale as the patch size shrinks to one pixel per token.

Subpackages: `ops` (the linear-time SSD scan), `models` (ViT and Adventurer in Flax NNX), `data` (grain pipelines
over TFDS ArrayRecord), `train` (the training loop behind `python -m pixeltok.main`), `scaling` (loss-vs-patch-size
law fits).
"""

__version__ = "0.1.0"
