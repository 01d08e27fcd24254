"""The demo's code-free files: `.safetensors` conversions of the trained pickles and the `.npz`
reference, which the demo and `--preset=demo` load (they never unpickle anything).

Training writes pickles (`edmguide.demo.train`, `edmguide.demo.features`); `write_code_free_copies`
turns them into the files the demo ships, through the same verified converter as
`python -m edmguide.nets.convert`. From the shipped pickles it reproduces the shipped files byte for byte.
"""

import os

NETWORKS = ('cond', 'uncond', 'bad', 'features')
REF_PICKLE, REF_NPZ = 'digits-ref.pkl', 'digits-ref.npz'


def code_free_files(outdir):
    """{source pickle: code-free copy} in `outdir`, in the order they are written."""
    pairs = {os.path.join(outdir, f'digits-{n}.pkl'): os.path.join(outdir, f'digits-{n}.safetensors') for n in NETWORKS}
    pairs[os.path.join(outdir, REF_PICKLE)] = os.path.join(outdir, REF_NPZ)
    return pairs


def write_code_free_copies(outdir, *, verbose=True):
    """Convert the four demo networks to `.safetensors` and the reference pickle to `.npz` in `outdir`
    (each verified and written atomically). Returns the written paths."""
    from edmguide.nets import convert
    from edmguide.metrics import stats
    written = []
    for src, dest in code_free_files(outdir).items():
        if dest.endswith('.npz'):
            stats.save_stats(stats.load_reference(src), dest)
            if verbose:
                print(f'{dest}: the statistics and features of {src}, as NumPy arrays')
        else:
            convert.convert(src, dest, verbose=verbose)
        written.append(dest)
    return written
