"""Layer 6, the models beside EDM2: adapters that present other diffusion models' networks (SD-XL,
DiT) to this project's sampler, schedule object, generation iterator, zips and metrics."""
