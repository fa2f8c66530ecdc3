"""pixeltok: how vision models scale as the patch size shrinks to one pixel per token.

Subpackages: `ops` (the linear-time SSD scan), `models` (ViT and Adventurer in Flax NNX), `data` (grain pipelines
over TFDS ArrayRecord), `train` (the training loop behind `python -m pixeltok.main`), `scaling` (loss-vs-patch-size
law fits).
"""

import os as _os

__version__ = "0.1.0"

# XLA:CPU fuses the attention softmax backward into slow reductions by default; fusing dots individually made a
# ViT-T p1 train step 1.73x faster on the 2-core development CPU (benchmarks/README.md, proposal P1) and left
# Adventurer unchanged. XLA reads XLA_FLAGS when the backend starts, so this works as long as pixeltok is imported
# before the first computation. A user's own setting of the flag wins; PIXELTOK_XLA_TUNING=0 turns this off.
_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
if _os.environ.get("PIXELTOK_XLA_TUNING", "1") != "0" and "ynn_fusion_type" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
