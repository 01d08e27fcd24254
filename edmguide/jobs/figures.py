"""The guidance-interval paper's figure grids, and the demo's labelled comparison grid.

Figure configurations are data (`FIGURES`); `render_figure` samples each class's hashed seeds
with the guidance-interval numerics (mode 'gi') through the shared generation iterator and lays
the images out exactly as the paper's grids: file names, grid shapes, red inset boxes and
Lanczos-zoomed insets. Inset coordinates are given for 512-pixel images and scaled to the
network's resolution, so the same figures render with small test networks.
"""

import os

import numpy as np

import dnnlib
from edmguide.util import images as imagelib
from edmguide.jobs.generation import generate_batches, generate_setting_batches
from edmguide.sampler.guidance import Interval
from edmguide.sampler.schedule import SamplerOptions
from edmguide.sampler.guidance import method_tag
from edmguide.sampler.seeds import gi_seeds

THICK_BOX = 7e-3    # line width of the box on the full image (4 px at 512)
THIN_BOX = 4e-3     # line width of the frame around the zoomed inset (2 px at 512)
RED = (255, 0, 0)
GI_SWEEP = [(1, [17, 22]), (3, [17, 22]), (5, [17, 22])]
CFG_SWEEP = [(1, None), (3, None), (5, None)]
CONST = [(1.0, [17, 22]), (5.0, [17, 22]), (5.0, None)]
FIG15_INSETS = [(100, 250, 180), (80, 150, 180), (25, 250, 180), (50, 150, 180)]


def _fig(mode, classes, seeds, configs, grid, insets=None):
    return dnnlib.EasyDict(mode=mode, classes=classes, seeds=seeds, configs=configs, grid=grid, insets=insets)


# (mode, classes, seeds per class, (G, step interval or None) configs, (rows, cols), insets (x, y, s)).
FIGURES = {
    'fig5': _fig('G_const', [64, 959], [[6, 16, 12, 29], [7, 8, 3, 4]], CONST, (2, 2)),
    'fig6': _fig('G_sweep', [483, 933], [[8], [9]], GI_SWEEP, (2, 3), [(225, 10, 190), (165, 190, 180)]),
    'fig8a': _fig('G_sweep', [483], [[17]], CFG_SWEEP, (2, 3), [(150, 175, 180)]),
    'fig8b': _fig('G_sweep', [483], [[17]], GI_SWEEP, (2, 3), [(150, 175, 180)]),
    'fig10': _fig('G_const', [17, 33, 497], [[19, 25, 7, 12, 16, 22], [13, 8, 6, 10, 15, 17],
                                             [29, 28, 27, 24, 23, 22]], CONST, (3, 2)),
    'fig12': _fig('G_sweep', [324, 360, 105, 555, 397, 698, 849, 970], [[2], [0], [3], [14], [21], [3], [21], [21]],
                  GI_SWEEP, (2, 3), [(75, 150, 200), (75, 0, 200), (90, 130, 200), (240, 250, 200),
                                     (275, 50, 200), (150, 50, 200), (200, 0, 200), (225, 50, 190)]),
    'fig15a': _fig('G_sweep', [33, 64, 1, 504], [[19], [25], [13], [6]], CFG_SWEEP, (2, 3), FIG15_INSETS),
    'fig15b': _fig('G_sweep', [33, 64, 1, 504], [[19], [25], [13], [6]], GI_SWEEP, (2, 3), FIG15_INSETS),
}


def parse_figure_names(text):
    """'all' or a comma-separated list of names from FIGURES (in the given order)."""
    from edmguide.util.errors import UserError
    names = list(FIGURES) if text.strip() == 'all' else [n.strip() for n in text.split(',') if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        raise UserError(f'unknown figure name(s) {", ".join(unknown) or repr(text)}; choose from: all, {", ".join(FIGURES)}')
    return names


def figure_images(name):
    """How many images figure `name` samples (for the progress bar)."""
    fig = FIGURES[name]
    if fig.mode == 'G_const':
        return sum(len(seeds) for seeds in fig.seeds) * len(fig.configs)
    return len(fig.classes) * len(fig.configs)


def check_figure_classes(names, net, net_path='the network'):
    """Refuse, before anything is rendered, figures whose classes the network does not have."""
    from edmguide.util.errors import UserError
    label_dim = int(getattr(net, 'label_dim', 0) or 0)
    if not label_dim:
        raise UserError(f'{net_path}: the figures need a class-conditional network (label_dim is 0)')
    too_high = [f'{name} (class {max(FIGURES[name].classes)})' for name in names if max(FIGURES[name].classes) >= label_dim]
    if too_high:
        raise UserError(f'{net_path} has {label_dim} classes (0..{label_dim - 1}), but {", ".join(too_high)} need more: '
                        f"the paper's figures need ImageNet-512 class-conditional networks (1000 classes); "
                        f'for the embedded demo use --preset=demo')


def _scale_inset(inset, resolution):
    """Inset (x, y, s) given for 512-pixel images, scaled to `resolution` pixels."""
    return tuple(int(round(v * resolution / 512)) for v in inset)


def _class_images(net, gnet, encoder, class_idx, seeds, weight, interval, device, verbose):
    """Decoded images (HWC uint8 list) of `seeds` for `class_idx`, GI-style: hashed seeds, fixed label."""
    hashed = gi_seeds(seeds, class_idx)
    schedule = SamplerOptions(mode='gi').schedule(net, device=device)
    guidance = schedule.guidance(weight, Interval.of_steps(*interval) if interval is not None else None)
    out = []
    for batch in generate_batches(net, encoder, hashed, schedule, gnet=gnet, guidance=guidance, class_idx=class_idx,
                                  max_batch_size=64, device=device, rank=0, world_size=1, sync=False):
        out += [imagelib.to_hwc_uint8(img) for img in batch.images]
    if verbose:
        print(f'  class {class_idx}: G={weight} interval={interval} seeds={list(seeds)}')
    return out


def render_figure(name, net, gnet, encoder, results_dir, *, device='cpu', verbose=False, on_images=None):
    """Render one figure of FIGURES into `<results_dir>/<name>/`; returns the written paths.
    `on_images(n)` is told each time n more images are sampled (a progress bar's update)."""
    on_images = on_images or (lambda n: None)
    fig = FIGURES[name]
    rows, cols = fig.grid
    outdir = os.path.join(results_dir, name)
    written = []
    for class_pos, (class_idx, seeds) in enumerate(zip(fig.classes, fig.seeds)):
        if fig.mode == 'G_const':
            for weight, interval in fig.configs:
                tiles = _class_images(net, gnet, encoder, class_idx, seeds, weight, interval, device, verbose)
                on_images(len(tiles))
                seed_part = '_'.join(f'{s:03d}' for s in seeds)
                path = os.path.join(outdir, f'p{class_idx:03d}-s{seed_part}-g{weight:.1f}-{method_tag(interval)}.png')
                imagelib.save_png(path, imagelib.tile_grid(tiles, rows, cols))
                written.append(path)
        else:
            tiles = []
            for weight, interval in fig.configs:
                tiles += _class_images(net, gnet, encoder, class_idx, seeds[:1], weight, interval, device, verbose)
                on_images(1)
            resolution = tiles[0].shape[0]
            x, y, s = _scale_inset(fig.insets[class_pos], resolution)
            boxed = [imagelib.draw_box(t, x, y, s, THICK_BOX, RED) for t in tiles]
            insets = [imagelib.draw_box(imagelib.zoom_inset(t, x, y, s), 0, 0, resolution, THIN_BOX, RED) for t in tiles]
            method = method_tag(fig.configs[-1][1])
            path = os.path.join(outdir, f'p{class_idx:03d}-s{seeds[0]:03d}-{method}.png')
            imagelib.save_png(path, imagelib.tile_grid(boxed + insets, rows, cols))
            written.append(path)
    return written


# ----------------------------------------------------------------------------
# Demo comparison grid.

def comparison_tiles(methods, net, encoder, column_classes, column_seeds, schedule):
    """Rows of HWC uint8 tiles: one row per method (label, guiding net, guidance on `schedule`), one tile per
    column (class, seed). Every row uses the same seeds, so the rows differ only by guidance; all rows
    are sampled together (`generate_setting_batches`), sharing the steps where their weights agree."""
    rows = [[] for _ in methods]
    branches = [(gnet, guidance) for _label, gnet, guidance in methods]
    for batch in generate_setting_batches(net, encoder, column_seeds, branches, schedule, class_idx=column_classes,
                                          max_batch_size=len(column_seeds), device=schedule.sigmas.device,
                                          rank=0, world_size=1, sync=False):
        for row, images in zip(rows, batch.images):
            row += [imagelib.to_hwc_uint8(img) for img in images]
    return rows


GROUP_GAP = 8        # white pixels between groups of columns (the seeds of one class)
LABEL_HEIGHT = 30    # caption strip above each row, and each line of the column headers
LABEL_FONT = 20      # caption font size (pixels); legible at README's display width


def layout_comparison(rows, labels, *, scale=4, column_headers=None, group_size=None, gap=GROUP_GAP,
                      label_height=LABEL_HEIGHT, font_size=LABEL_FONT):
    """The labelled grid of `comparison_tiles` rows.

    Each row is a strip of its tiles (enlarged `scale` times) with its caption above it. Columns
    come in groups of `group_size` (the seeds of one class), separated by `gap` white pixels, and
    `column_headers` = (group titles, column titles) head the grid in two lines, e.g.
    (['class 3', ...], ['seed 0', 'seed 1', ...]).
    """
    num_cols = len(rows[0])
    group_size = group_size or num_cols
    tile_w = rows[0][0].shape[1] * scale

    def strip_of(tiles):
        parts = []
        for start in range(0, num_cols, group_size):
            group = imagelib.tile_grid(tiles[start:start + group_size], 1, len(tiles[start:start + group_size]))
            if scale > 1:
                group = np.repeat(np.repeat(group, scale, axis=0), scale, axis=1)
            group = imagelib.to_hwc_uint8(group)
            if group.shape[2] == 1:
                group = np.repeat(group, 3, axis=2)
            if parts:
                parts.append(np.full([group.shape[0], gap, 3], 255, dtype=np.uint8))
            parts.append(group)
        return np.concatenate(parts, axis=1)

    def x_of(col):  # left pixel of column `col`
        return col * tile_w + (col // group_size) * gap

    row_images = [imagelib.add_label(strip_of(tiles), label, height=label_height, font_size=font_size)
                  for tiles, label in zip(rows, labels)]
    width = row_images[0].shape[1]
    if column_headers is not None:
        group_titles, column_titles = column_headers
        group_spans = [(x_of(g * group_size), x_of(min((g + 1) * group_size, num_cols) - 1) + tile_w)
                       for g in range(len(group_titles))]
        column_spans = [(x_of(c), x_of(c) + tile_w) for c in range(num_cols)]
        header = [imagelib.text_strip(width, label_height, list(zip(group_spans, group_titles)), font_size=font_size),
                  imagelib.text_strip(width, label_height, list(zip(column_spans, column_titles)),
                                      font_size=int(font_size * 0.8), color=(90, 90, 90))]
        row_images = header + row_images
    return np.concatenate(row_images, axis=0)


def render_comparison(methods, net, encoder, classes, seeds, outpath, schedule, *, scale=4):
    """Labelled grid: one row per method (label, guiding net, guidance on `schedule`), one column per (class, seed).

    Every row uses the same seeds, so the rows differ only by guidance. Returns the grid array.
    """
    column_seeds = [s for _ in classes for s in seeds]
    column_classes = [c for c in classes for _ in seeds]
    rows = comparison_tiles(methods, net, encoder, column_classes, column_seeds, schedule)
    headers = ([f'class {c}' for c in classes], [f'seed {s}' for s in column_seeds])
    grid = layout_comparison(rows, [label for label, _gnet, _guidance in methods], scale=scale,
                             column_headers=headers, group_size=len(seeds))
    imagelib.save_png(outpath, grid)
    return grid
