"""Guidance sweeps: a Fréchet distance for each (method, weight), measured on the fly.

Used for the demo's results table in README, and usable with any networks and registered metric.
Every setting samples the same seeds, so differences between rows come from guidance alone.
"""

import dnnlib
from edmguide.generation import build_guidance, generate_batches
from edmguide.metrics import pipeline, stats as stats_lib


def measure(net, encoder, ref_path, metric, *, gnet=None, weight=1.0, interval=None, num_images=1000, seed=0,
            batch_size=250, device='cpu', mode='edm2', ref=None):
    """Fréchet distance of `num_images` images (seeds seed..) generated with one guidance setting."""
    guidance = build_guidance(weight, interval=interval, net=net, mode=mode, device=device)
    batches = generate_batches(net, encoder, range(seed, seed + num_images), gnet=gnet, guidance=guidance,
                               max_batch_size=batch_size, device=device, rank=0, world_size=1, mode=mode, sync=False)
    return pipeline.calc_metrics_for_generator(batches, num_images, ref_path, [metric], ref=ref, device=device,
                                               progress=False)[metric]


def sweep(net, encoder, ref_path, metric, methods, *, log=print, **kwargs):
    """`methods`: list of (label, guiding net or None, interval or None, weights). Returns result rows.

    Each row: EasyDict(label, guided, interval, results={w: fd}, best_weight, best).
    """
    ref = stats_lib.load_reference(ref_path)  # once for all settings
    rows = []
    for label, gnet, interval, weights in methods:
        results = {}
        for w in weights:
            results[w] = measure(net, encoder, ref_path, metric, gnet=gnet, weight=w, interval=interval, ref=ref, **kwargs)
            log(f'{label:28s} interval={str(interval):10s} w={w:<5g} {metric} = {results[w]:g}')
        best_weight = min(results, key=results.get)
        rows.append(dnnlib.EasyDict(label=label, guided=gnet is not None, interval=interval, results=results,
                                    best_weight=best_weight, best=results[best_weight]))
    return rows


def markdown_table(rows, metric):
    """The sweep as a markdown table: best weight and distance per method, then every weight."""
    lines = [f'| method | guided steps | best w | {metric} at best w | all weights |', '|---|---|---|---|---|']
    for row in rows:
        steps = 'none' if not row.guided else 'all' if row.interval is None else f'[{row.interval[0]}, {row.interval[1]}]'
        every = ', '.join(f'{w:g}: {v:.2f}' for w, v in row.results.items())
        lines.append(f'| {row.label} | {steps} | {row.best_weight:g} | {row.best:.2f} | {every} |')
    return '\n'.join(lines)
