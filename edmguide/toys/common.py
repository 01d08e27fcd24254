"""Small helpers shared by the toy figures: headless matplotlib and atomic PNG saving."""

import io

import matplotlib
import PIL.Image

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from edmguide.util.images import atomic_write  # noqa: E402


def save_figure(fig, path, dpi=100):
    """Render `fig` to PNG, reduce it to a 256-colour palette (keeps the files small), write it
    atomically to `path` and close the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    with PIL.Image.open(buf) as img:
        small = img.convert('RGB').quantize(256, method=PIL.Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format='png', optimize=True)
    atomic_write(path, out.getvalue())
    return path


def trajectory_recorder(store):
    """A `progress` callback for `edmguide.sampler.sampling.sample` that appends (sigma_next, x) per step."""
    def record(info):
        store.append((info['sigma_next'], info['x'].detach().reshape(len(info['x']), -1).cpu().clone()))
    return record
