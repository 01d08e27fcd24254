"""Toy illustrations of guidance on low-dimensional data with known ideal denoisers.

- `gi_1d`: the guidance-interval paper's 1D two-class example (CFG over all noise levels vs CFG
  limited to an interval of middle noise levels), sampled with the ideal denoiser.
- `ag_2d`: the autoguidance paper's 2D fractal-tree example (ground truth, no guidance, CFG,
  autoguidance) with tiny MLP denoisers trained against the ideal denoiser (`mlp`, `tree`).

All sampling goes through `edmguide.sampler.sampling.sample`; the ideal denoisers come from `edmguide.sampler.gmm`.
"""
