"""edmguide.jobs.figures.comparison_tiles: all rows from one tree-sampler call per batch, with the same
images as sampling each row on its own."""

import numpy as np

from edmguide.jobs import figures
from edmguide.util import images as imagelib
from edmguide.nets import loading
from edmguide.nets import presets
from edmguide.jobs.generation import generate_batches
from edmguide.sampler.guidance import Interval
from edmguide.sampler.schedule import SamplerOptions


def test_comparison_rows_equal_per_row_sampling():
    files = presets.DEMO_FILES
    net, encoder, uncond = loading.load_networks(files.cond, files.uncond, 'cpu')
    bad = loading.load_networks(files.bad, None, 'cpu')[0]
    guides = {'none': None, 'uncond': uncond, 'bad': bad}
    schedule = SamplerOptions().schedule(net, device='cpu')
    methods = [(label, guides[guide], schedule.guidance(w, Interval.of_steps(*interval) if interval else None))
               for label, guide, w, interval in presets.DEMO_METHODS]
    classes, seeds = [3, 7], [0, 1]
    rows = figures.comparison_tiles(methods, net, encoder, classes, seeds, schedule)
    for (_label, gnet, guidance), row in zip(methods, rows):
        expected = [imagelib.to_hwc_uint8(img) for batch in generate_batches(
            net, encoder, seeds, schedule, gnet=gnet, guidance=guidance, class_idx=classes, max_batch_size=2,
            rank=0, world_size=1, sync=False) for img in batch.images]
        assert len(row) == 2 and all(np.array_equal(a, b) for a, b in zip(row, expected))
    assert not np.array_equal(rows[0][0], rows[1][0])
