"""The issue-6 sweep at 16x16 (Fashion-MNIST resized 28 -> 16): the grid committed in reports/fashion_mnist_patch/.

    python launch/sweep.py --sweep configs/sweeps/fashion_mnist_patch_16px.py --root runs/fmnist_patch_16px
    python -m pixeltok.scaling --runs runs/fmnist_patch_16px --out reports/fashion_mnist_patch

Same grid and recipe as `fashion_mnist_patch.py` (Adventurer and ViT, p = 16, 8, 4, 2, 1, seeds 0 and 1, 200 steps
of batch 64), at 16x16 instead of 32x32. Why 16x16: at 32x32 the p=1 runs dominate (1,026 tokens; ~3-3.5 h for the
grid on the 2-core machine), which does not fit one working session next to the test suite; at 16x16 the token
counts are 1, 4, 16, 64, 256 (+ cls / heading token), the p=1 Adventurer runs at ~31 img/s on this CPU (measured:
30 steps of batch 64 with a 20-batch eval, 3 min wall including ~1.5 min start-up and compilation), and the grid takes
~50 min. p=16 is a single token: the whole image through one linear patch embedding, the extreme end of the axis.
"""

import importlib.util
import pathlib

# Sweep modules are loaded by file path (launch/sweep.py), not as a package: load the sibling the same way.
_spec = importlib.util.spec_from_file_location(
    "fashion_mnist_patch", pathlib.Path(__file__).with_name("fashion_mnist_patch.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_sweep() -> list[dict]:
    """The 20 runs of the 32x32 grid at 16x16."""
    return _base.get_sweep(res=16)
