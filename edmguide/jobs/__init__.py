"""Layer 4, generation jobs on top of the sampler and the loader: the one generation iterator (generation),
resumable zips (zipdump), paper and demo figures (figures) and the command-line option parsing the scripts share (cli)."""
