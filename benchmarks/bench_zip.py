"""Benchmark 2: generate_zip overhead (wall time outside network evaluations)."""

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import CONFIGS, GUIDANCE_WEIGHT, INTERVAL, NUM_STEPS, _iqr, _jsonable, _rel_err, _smooth_image  # noqa: F401

SECTION = 'pipeline'
TITLE = '2. pipeline overhead'
ORDER = 20

#----------------------------------------------------------------------------
# 2. Pipeline overhead of generate_zip: wall time outside network evaluations.

def bench_pipeline(cases, device, log, tmpdir):
    import dnnlib
    import generate_zip as gz
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    from edmguide.util import images as imagelib
    from edmguide.nets import loading
    from training.encoders import StandardRGBEncoder
    results = []
    for k, case in enumerate(cases):
        folder = os.path.join(tmpdir, f'pipeline{k}')
        os.makedirs(folder, exist_ok=True)
        paths = {}
        for role, spec, seed in [('cond', case['main'], 11), ('uncond', case['guide'], 12)]:
            paths[role] = os.path.join(folder, f'{role}.pkl')
            with open(paths[role], 'wb') as f:
                pickle.dump(dnnlib.EasyDict(encoder=StandardRGBEncoder(), ema=build_net(spec, seed, 'cpu')), f)
        totals = {}
        original = loading.load_network

        def instrumented(*args, **kwargs):
            net, encoder = original(*args, **kwargs)
            timed_net_hooks(net, totals, 'net', device)
            return net, encoder

        loading.load_network = instrumented
        try:
            t0 = time.perf_counter()
            zip_stats = gz.generate_zip(paths['cond'], paths['uncond'], zip_dir=folder,
                                        num_images=case['num_images'], batch_size=case['batch_size'],
                                        guidance_scale=GUIDANCE_WEIGHT,
                                        interval=Interval.of_steps(*case.get('interval', INTERVAL)),
                                        sampler=SamplerOptions(num_steps=case.get('num_steps', NUM_STEPS), mode='gi'),
                                        device=str(device), progress=False)
            synchronize(device)
            wall = time.perf_counter() - t0
        finally:
            loading.load_network = original
        with zipfile.ZipFile(zip_stats['path']) as zf:
            entries = zf.namelist()
            sample_png = zf.read(entries[0])
        assert len(entries) == case['num_images']
        shape = np.asarray(__import__('PIL.Image', fromlist=['Image']).open(io.BytesIO(sample_png))).shape
        # PNG encoding cost per image at this size and at 512x512 (what the real img512 runs write).
        enc = {}
        rng = np.random.default_rng(0)
        for label, hw in [('this size', shape[:2]), ('512x512', (512, 512))]:
            img = _smooth_image(rng, hw)
            n = 3 if hw[0] >= 256 else 50
            t1 = time.perf_counter()
            for _ in range(n):
                imagelib.encode_png(img)
            enc[label] = (time.perf_counter() - t1) / n * 1e3
        net_time = totals.get('net', 0.0)
        n_img = case['num_images']
        stages = zip_stats['timing']  # dump_zip's own: sampling (nets included), decoding, writing (threads), zip
        results.append(dict(name=case['name'], num_images=n_img, batch_size=case['batch_size'],
                            image_shape=list(shape), wall_s=wall, net_s=net_time, net_calls=totals.get('net_calls', 0),
                            outside_net_share=1 - net_time / wall,
                            net_ms_per_image=net_time / n_img * 1e3,
                            outside_ms_per_image=(wall - net_time) / n_img * 1e3,
                            png_encode_ms=enc, stages_s=stages,
                            sampler_outside_net_s=stages.get('sampling', float('nan')) - net_time))
        log(f'  pipeline {case["name"]}: wall {wall:.1f}s, outside nets {100 * (1 - net_time / wall):.1f}%')
    return dict(rows=results, guidance=f'w={GUIDANCE_WEIGHT}, interval {list(cases[0].get("interval", INTERVAL))}, '
                                      f'numerics gi, {cases[0].get("num_steps", NUM_STEPS)} steps',
                target=dict(name='share of generate_zip wall time outside network evaluations < 5%',
                            met_per_case={r['name']: r['outside_net_share'] < 0.05 for r in results}))


def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    return bench_pipeline(ctx.cfg['pipeline'], ctx.device, ctx.log, ctx.tmpdir)


def markdown(p):
    """This section's part of the combined markdown report."""
    out = []
    out += [f"## 2. generate_zip overhead ({p['guidance']})", '',
            '| net | images | batch | wall s | in nets s | outside nets | outside ms / image | net ms / image | PNG encode ms (this size / 512x512) |',
            '|---|---|---|---|---|---|---|---|---|']
    for r in p['rows']:
        out.append(f"| {r['name']} ({r['image_shape'][0]}x{r['image_shape'][1]}) | {r['num_images']} | {r['batch_size']} | "
                   f"{r['wall_s']:.1f} | {r['net_s']:.1f} | {100 * r['outside_net_share']:.2f}% | "
                   f"{r['outside_ms_per_image']:.1f} | {r['net_ms_per_image']:.1f} | "
                   f"{r['png_encode_ms']['this size']:.2f} / {r['png_encode_ms']['512x512']:.1f} |")
    out += ['', 'Where the outside time goes (dump_zip timing, s): sampler steps outside the nets / decoding / '
            'PNG writing (worker threads, overlaps sampling) / zip assembly; the rest is loading and setup.', '']
    for r in p['rows']:
        st = r['stages_s']
        out.append(f"- {r['name']}: {r['sampler_outside_net_s']:.2f} / {st.get('decoding', float('nan')):.2f} / "
                   f"{st.get('writing', float('nan')):.2f} / {st.get('zip', float('nan')):.2f}; rest "
                   f"{r['wall_s'] - st.get('sampling', 0) - st.get('decoding', 0) - st.get('zip', 0):.2f}")
    met = p['target']['met_per_case']
    out += ['', 'Target (< 5% outside network evaluations): ' +
            ', '.join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()) + '.', '']
    return out
