"""Layer 2, the sampler: w(sigma) and the Interval value (guidance), the options object and the one schedule
tensor (schedule), the Heun sampler with its shared-prefix tree (sampling), per-seed random draws (seeds),
and the ideal Gaussian-mixture denoiser (gmm)."""
