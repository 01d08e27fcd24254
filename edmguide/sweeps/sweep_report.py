"""Reports of a guidance sweep (`edmguide.sweeps.sweep`): sweep.jsonl, sweep.md and PNG plots.

- `sweep.jsonl`: one JSON object per setting (guidance, interval, sigma, every metric, num_images,
  evaluations per image of the main and the guiding net when the setting runs alone, ...).
- `sweep.md`: a table per guiding net and interval, the best weight of each metric in bold, the
  best setting of each metric overall, and a link to every figure.
- `sweep-<metric>.png`: the metric against w, one line per (guide, interval) (GI Fig. 3 style); every
  line starts at the shared w = 1 point.
- `heatmap-<metric>-<guide>-grid<a0..a1>_<b0..b1>-w<w>.png` for intervals given as a grid: the
  metric over (start, stop) at one weight, best cell marked (GI Fig. 5 style); a grid range with a
  step `a0..a1:s` is written `a0..a1ss`.

Every figure has its own name (one that would repeat gets `-2`, `-3`, ...). An infinite noise
bound, as in `(0, inf]`, is the string "inf" in sweep.jsonl (JSON has no infinity).
"""

import io
import json
import os

import numpy as np

from edmguide.util import images as imagelib


def _groups(records):
    """{(guide, label): records sorted by w} of the guided settings, in first-seen order; the
    unguided record (w = 1) or None."""
    base = next((r for r in records if r['label'] == 'none'), None)
    groups = {}
    for r in records:
        if r['label'] != 'none' and r['grid'] is None:
            groups.setdefault((r['guide'], r['label']), []).append(r)
    return {k: sorted(v, key=lambda r: r['guidance']) for k, v in groups.items()}, base


def _fmt(value):
    return '–' if value is None else f'{value:.3f}'


def _fmt_sigma(value):
    return value if isinstance(value, str) else f'{value:.4g}'  # 'inf' is kept as a string (JSON)


def higher_is_better(name):
    """Precision and recall (shares of a manifold) are better high; distances are better low."""
    return name.startswith(('precision', 'recall'))


def best_record(rows, metric):
    """The row with the best finite value of `metric` (lowest distance, highest precision/recall), or None."""
    valid = [r for r in rows if r.get(metric) is not None]
    if not valid:
        return None
    return (max if higher_is_better(metric) else min)(valid, key=lambda r: r[metric])





def markdown(records, metrics, summary, *, title='Guidance sweep', figures=()):
    """The sweep as markdown: per (guide, interval) the metrics against w, best per metric in bold;
    `figures`: (file name, caption) of the figures, each shown and linked at the end."""
    groups, base = _groups(records)
    lines = [f'# {title}', '',
             f'{summary.settings} settings, {records[0]["num_images"]} images each. Network evaluations per image '
             f'(main + guide): {summary.evals_sweep["net"] + summary.evals_sweep["gnet"]} for the whole sweep, '
             f'against {summary.evals_separate["net"] + summary.evals_separate["gnet"]} for separate runs '
             f'({summary.saving:.1%} saved by shared trajectory prefixes).', '']
    header = '| guide | guided steps | σ range | w | ' + ' | '.join(metrics) + ' | evals main + guide |'
    rule = '|' + '---|' * (5 + len(metrics))
    grid_rows = [r for r in records if r['grid'] is not None]
    sections = list(groups.items())
    for grid in dict.fromkeys(r['grid'] for r in grid_rows):
        for guide in dict.fromkeys(r['guide'] for r in grid_rows if r['grid'] == grid):
            for w in dict.fromkeys(r['guidance'] for r in grid_rows if r['grid'] == grid and r['guide'] == guide):
                sections.append(((guide, f'grid {grid} at w = {w:g}'),
                                 [r for r in grid_rows if (r['grid'], r['guide'], r['guidance']) == (grid, guide, w)]))
    for (guide, label), rows in sections:
        shown = ([base] if base is not None and rows[0]['grid'] is None else []) + rows
        lines += [f'## guide {guide}, interval {label}', '', header, rule]
        best = {m: best_record(shown, m) for m in metrics}
        for r in shown:
            cells = [f'**{_fmt(r.get(m))}**' if best[m] is r else _fmt(r.get(m)) for m in metrics]
            steps = 'none' if r['label'] == 'none' else 'all' if r['interval'] is None else f'[{r["interval"][0]}, {r["interval"][1]}]'
            sigma = '–' if r['sigma'] is None else f'({_fmt_sigma(r["sigma"][0])}, {_fmt_sigma(r["sigma"][1])}]'
            lines.append(f'| {r["guide"] or "–"} | {steps} | {sigma} | {r["guidance"]:g} | ' + ' | '.join(cells)
                         + f' | {r["evals_main"]} + {r["evals_guide"]} |')
        lines.append('')
    lines += ['## Best setting per metric', '', '| metric | value | guide | interval | w |', '|---|---|---|---|---|']
    for m in metrics:
        r = best_record(records, m)
        if r is not None:
            lines.append(f'| {m} | {r[m]:.3f} | {r["guide"] or "–"} | {r["label"]} | {r["guidance"]:g} |')
    if figures:
        lines += ['', '## Figures', '']
        lines += [f'[{caption}]({name})\n\n![{caption}]({name})\n' for name, caption in figures]
    return '\n'.join(lines) + '\n'


def _figure_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110, bbox_inches='tight')
    return buf.getvalue()


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_weights(records, metric, *, labels=None, title=None):
    """PNG bytes of `metric` against w, one line per (guide, interval); None if there is nothing to draw.

    `labels`: optional {(guide, interval label): legend text}."""
    groups, base = _groups(records)
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (guide, label), rows in groups.items():
        points = ([base] if base is not None else []) + rows
        points = [r for r in points if r.get(metric) is not None]
        legend = (labels or {}).get((guide, label), f'{guide}, {label}')
        ax.plot([r['guidance'] for r in points], [r[metric] for r in points], marker='o', markersize=3, label=legend)
    ax.set_xlabel('guidance weight w')
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    data = _figure_bytes(fig)
    plt.close(fig)
    return data


def heatmaps(records, metric, *, title=None):
    """{(guide, grid, w): PNG bytes} of `metric` over interval (start, stop), best cell marked."""
    out = {}
    grid_rows = [r for r in records if r['grid'] is not None and r.get(metric) is not None]
    for key in dict.fromkeys((r['guide'], r['grid'], r['guidance']) for r in grid_rows):
        rows = [r for r in grid_rows if (r['guide'], r['grid'], r['guidance']) == key]
        starts = sorted({r['interval'][0] for r in rows})
        stops = sorted({r['interval'][1] for r in rows})
        values = np.full((len(stops), len(starts)), np.nan)
        for r in rows:
            values[stops.index(r['interval'][1]), starts.index(r['interval'][0])] = r[metric]
        best = best_record(rows, metric)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(1.2 + 0.42 * len(starts), 1.0 + 0.36 * len(stops)))
        image = ax.imshow(np.ma.masked_invalid(values), origin='lower', cmap=('viridis' if higher_is_better(metric) else 'viridis_r'), aspect='auto')
        middle = (np.nanmin(values) + np.nanmax(values)) / 2
        for y in range(len(stops)):
            for x in range(len(starts)):
                if np.isfinite(values[y, x]):  # dark text on the light (low) end of viridis_r
                    ax.text(x, y, f'{values[y, x]:.3g}', ha='center', va='center', fontsize=6,
                            color='black' if values[y, x] < middle else 'white')
        bx, by = starts.index(best['interval'][0]), stops.index(best['interval'][1])
        ax.add_patch(plt.Rectangle((bx - 0.5, by - 0.5), 1, 1, fill=False, edgecolor='red', linewidth=2))
        ax.set_xticks(range(len(starts)), [str(s) for s in starts], fontsize=7)
        ax.set_yticks(range(len(stops)), [str(s) for s in stops], fontsize=7)
        ax.set_xlabel('first guided step')
        ax.set_ylabel('last guided step')
        ax.set_title(title or f'{metric}, w = {key[2]:g} (best [{best["interval"][0]}, {best["interval"][1]}]: '
                     f'{best[metric]:.3g})', fontsize=9)
        fig.colorbar(image, ax=ax, label=metric)
        out[key] = _figure_bytes(fig)
        plt.close(fig)
    return out


def _slug(text):
    return ''.join(c if c.isalnum() or c in '.-' else '_' for c in str(text))


def grid_slug(grid):
    """'[10..12, 11..13:2]' -> 'grid10..12_11..13s2' (for file names)."""
    return 'grid' + _slug(grid.strip('[]').replace(' ', '').replace(':', 's').replace(',', '_'))


def render_report(records, metrics, summary):
    """{file name: bytes} of the report: sweep.jsonl, the PNG figures (each its own name), and
    sweep.md, which links every figure. Raises (before anything is written) on what it cannot show."""
    files, figures = {}, []
    def add_figure(name, data, caption):
        stem, number = name, 1
        while f'{name}.png' in files:
            number += 1
            name = f'{stem}-{number}'
        files[f'{name}.png'] = data
        figures.append((f'{name}.png', caption))
    jsonl = ''.join(json.dumps(r, allow_nan=False) + '\n' for r in records).encode()
    for m in metrics:
        data = plot_weights(records, m)
        if data is not None:
            add_figure(f'sweep-{_slug(m)}', data, f'{m} against w')
        for (guide, grid, w), data in heatmaps(records, m).items():
            add_figure(f'heatmap-{_slug(m)}-{_slug(guide)}-{grid_slug(grid)}-w{w:g}', data,
                       f'{m} over the grid {grid}, guide {guide}, w = {w:g}')
    return {'sweep.jsonl': jsonl, **files, 'sweep.md': markdown(records, metrics, summary, figures=figures).encode()}


def write_report(outdir, records, metrics, summary):
    """Write sweep.jsonl, the PNG figures and sweep.md into `outdir` (each atomically, all rendered
    before the first is written); returns the paths."""
    written = []
    for name, data in render_report(records, metrics, summary).items():
        path = os.path.join(outdir, name)
        imagelib.atomic_write(path, data)
        written.append(path)
    return written
