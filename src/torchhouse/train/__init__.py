"""The training core: `Model`, the loop, a fit's checked arguments (`FitSpec`) and live state
(`FitState`), the first-step checks, the built-in callbacks, `History` and `LightModel`.
"""
