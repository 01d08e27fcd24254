"""Layer 1, utilities that know nothing about diffusion: one-line errors, output checks, atomic image and
file writing, the run lock, progress bars, the CPU thread rule."""
