"""Scaling-law fits of loss against patch size (method: docs/scaling.md).

`fit_power_law(patch_sizes, losses)` fits L(p) = E + A·p^α with bootstrap intervals; `python -m pixeltok.scaling`
fits run workdirs and writes fit.json, plots and summary.md.
"""

from pixeltok.scaling.compare import compare_models
from pixeltok.scaling.fit import FitResult, fit_power_law, fit_tokens, profile_over_E, validate_inputs

__all__ = ["FitResult", "compare_models", "fit_power_law", "fit_tokens", "profile_over_E", "validate_inputs"]
