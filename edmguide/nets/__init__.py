"""Layer 3, networks: the one loader for pickles, .safetensors and URLs (loading), input files
recorded by content (digests), weights without code (weights, convert, embedded_source) and the
presets table."""
