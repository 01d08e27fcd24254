"""Models beside EDM2: adapters that present other diffusion models' networks (DiT, SD-XL) to this
project's sampler, loaders and generation code."""
