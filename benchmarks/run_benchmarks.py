#!/usr/bin/env python3
"""Issue 6 benchmarks: sampler cost per guidance method, generate_zip overhead, Fréchet distance,
feature-extraction throughput and (CUDA only) faster precision options, in one run.

    python benchmarks/run_benchmarks.py                  # full run on this machine's default device
    python benchmarks/run_benchmarks.py --quick          # tiny sizes, a few seconds (smoke test)
    python benchmarks/run_benchmarks.py --device cuda --out benchmarks/results

Writes `<out>/<device>-<date>.json` and `.md` and prints the markdown tables. Every network has random
weights (every parameter, the zero-initialized gains included), so no download is needed. Timings
are medians over repeats, with the methods interleaved round-robin so that load from other users of
a shared machine hits all of them alike. Nothing here changes the library's default numerics or
restates the network's maths: the options of section 5 (U-Net dtype, memory format, torch.compile)
wrap the library's network, and their outputs are compared with the default. Attention backends
are left to the network code.
"""

import argparse
import contextlib
import copy
import datetime
import io
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTIONS = ('sampler', 'pipeline', 'frechet', 'features', 'precision')

#----------------------------------------------------------------------------
# Sizes. CPU sizes keep the full run under ~10 minutes on 2 shared cores; CUDA uses the real
# img512 XS/S configurations at 64x64x4 latents (fp16, as upstream).

def small_net_kwargs(res, channels, label_dim, img_channels=3):
    return dict(img_resolution=res, img_channels=img_channels, label_dim=label_dim, model_channels=channels,
                channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[res // 4],
                channels_per_head=channels)  # 2 heads at the attention levels (64-channel heads need wide nets)

CONFIGS = {
    'quick': dict(
        sampler=dict(main=small_net_kwargs(8, 8, 10), cfg_guide=small_net_kwargs(8, 8, 0),
                     auto_guide=small_net_kwargs(8, 4, 10), batch=2, repeats=2, num_steps=8, interval=(3, 5)),
        pipeline=[dict(name='tiny 8x8', main=small_net_kwargs(8, 8, 10), guide=small_net_kwargs(8, 8, 0),
                       num_images=4, batch_size=64, num_steps=8, interval=(3, 5))],
        frechet=dict(dim=64, repeats=1, ref_repeats=1),
        features=dict(num_images=16, res=16, batch=8, num_workers=0),
        precision=dict(nets=[('tiny', small_net_kwargs(8, 8, 10))], batch=2, iters=2),
    ),
    'cpu': dict(
        sampler=dict(main=small_net_kwargs(32, 16, 1000), cfg_guide=small_net_kwargs(32, 16, 0),
                     auto_guide=small_net_kwargs(32, 8, 1000), batch=4, repeats=9),
        pipeline=[dict(name='small 16x16, 16 ch', main=small_net_kwargs(16, 16, 1000),
                       guide=small_net_kwargs(16, 16, 0), num_images=64, batch_size=64),
                  dict(name='larger 32x32, 16 ch', main=small_net_kwargs(32, 16, 1000),
                       guide=small_net_kwargs(32, 16, 0), num_images=64, batch_size=64)],
        frechet=dict(dim=2048, repeats=3, ref_repeats=1),
        features=dict(num_images=1024, res=64, batch=64, num_workers=2),
        precision=dict(nets=[('tiny', small_net_kwargs(16, 16, 1000))], batch=4, iters=3),
    ),
    'cuda': dict(
        sampler=dict(main='img512-s', cfg_guide='img512-s:uncond', auto_guide='img512-xs', batch=32, repeats=5),
        pipeline=[dict(name='img64-xs (pixels, 64x64)', main='img64-xs', guide='img64-xs:uncond',
                       num_images=256, batch_size=64),
                  dict(name='img64-s (pixels, 64x64)', main='img64-s', guide='img64-s:uncond',
                       num_images=256, batch_size=64)],
        frechet=dict(dim=2048, repeats=3, ref_repeats=1),
        features=dict(num_images=4096, res=64, batch=64, num_workers=2),
        precision=dict(nets=[('img512-xs', 'img512-xs'), ('img512-s', 'img512-s')], batch=64, iters=10),
    ),
}

GUIDANCE_WEIGHT = 2.0
INTERVAL = (17, 22)  # step indices of the 32-step schedule (the guidance-interval paper's EDM2 setting)
NUM_STEPS = 32

#----------------------------------------------------------------------------
# Helpers.

def build_net(spec, seed, device):
    """A Precond with every parameter random. `spec`: kwargs dict, or a preset name ('img512-s',
    'img512-s:uncond' for label_dim 0)."""
    from training import networks_edm2, presets
    torch.manual_seed(seed)
    if isinstance(spec, str):
        name, _, flag = spec.partition(':')
        net = presets.build_edm2_network(name, label_dim=(0 if flag == 'uncond' else 1000))
    else:
        net = networks_edm2.Precond(**spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim == 0:  # gains start at zero; random values make the output depend on every weight
                param.copy_(torch.randn([], generator=gen) * 0.5)
    return net.eval().requires_grad_(False).to(device)


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def median(values):
    return float(statistics.median(values)) if values else float('nan')


def machine_info(device, threads):
    info = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), python=platform.python_version(),
                platform=platform.platform(), torch=torch.__version__, numpy=np.__version__,
                device=str(device), torch_threads=threads, cpu_count=os.cpu_count())
    try:
        import scipy
        info['scipy'] = scipy.__version__
    except ImportError:
        pass
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        info['cpu_model'] = names[0] if names else platform.processor()
        info['cpu_logical_cores'] = len(names)
    except OSError:
        info['cpu_model'] = platform.processor()
    if hasattr(os, 'getloadavg'):
        info['load_average_start'] = [round(v, 2) for v in os.getloadavg()]
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


class PeakRSS:
    """Peak resident memory of this process and its children (DataLoader workers), sampled in a thread."""

    def __init__(self, interval=0.005):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.base = 0
        self._stop = threading.Event()

    def _rss(self):
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(Exception):
                total += child.memory_info().rss
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def timed_net_hooks(net, totals, key, device):
    """Forward hooks on `net` that add the wall time of each call to totals[key]."""
    state = {}

    def pre(_module, _inputs):
        synchronize(device)
        state['t0'] = time.perf_counter()

    def post(_module, _inputs, _output):
        synchronize(device)
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - state['t0']
        totals[key + '_calls'] = totals.get(key + '_calls', 0) + 1

    return [net.register_forward_pre_hook(pre), net.register_forward_hook(post)]

#----------------------------------------------------------------------------
# 1. Sampler: time and evaluations per image for each guidance method.

def bench_sampler(cfg, device, log):
    from edmguide import sampling
    from edmguide.generation import build_guidance
    from edmguide.guidance import GuidanceSchedule
    net = build_net(cfg['main'], 1, device)
    cfg_guide = build_net(cfg['cfg_guide'], 2, device)
    auto_guide = build_net(cfg['auto_guide'], 3, device)
    batch, mode = cfg['batch'], 'gi'
    num_steps, iv = cfg.get('num_steps', NUM_STEPS), cfg.get('interval', INTERVAL)
    interval = build_guidance(GUIDANCE_WEIGHT, interval=iv, net=net, mode=mode, num_steps=num_steps)
    constant = GuidanceSchedule.constant(GUIDANCE_WEIGHT)
    int_name = f'interval [{iv[0]}, {iv[1]}]'
    methods = [('no guidance', None, GuidanceSchedule.none()), ('CFG', cfg_guide, constant),
               (f'CFG + {int_name}', cfg_guide, interval),
               ('autoguidance', auto_guide, constant),
               (f'autoguidance + {int_name}', auto_guide, interval)]
    gen = torch.Generator(device).manual_seed(0)
    res, ch = net.img_resolution, net.img_channels
    noise = torch.randn([batch, ch, res, res], generator=gen, device=device)
    labels = torch.eye(net.label_dim, device=device)[torch.arange(batch, device=device) % net.label_dim]

    # Clock: on the CPU, process CPU time (1 thread), which other users' load inflates far less than
    # wall time; on CUDA, synchronized wall time.
    cuda = torch.device(device).type == 'cuda'

    def clock():
        if cuda:
            synchronize(device)
            return time.perf_counter()
        return time.process_time()

    # Per-evaluation cost of each net, measured by forward hooks on every call made *inside* the
    # sampler runs, per round: the cost-weighted prediction then sees the same machine load as the
    # sampler time it is compared with (no separate timing loop at another moment).
    nets = [('main', net), ('cfg_guide', cfg_guide), ('auto_guide', auto_guide)]
    rounds = cfg['repeats']
    eval_times = {name: [[] for _ in range(rounds)] for name, _ in nets}  # [net][round] -> seconds per call
    current = {'round': None, 'run_net_s': 0.0}
    handles = []
    for name, model in nets:
        start = {}

        def pre(_module, _inputs, start=start):
            start['t'] = clock()

        def post(_module, _inputs, _output, name=name, start=start):
            if current['round'] is not None:
                spent = clock() - start['t']
                eval_times[name][current['round']].append(spent)
                current['run_net_s'] += spent
        handles += [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]

    times = {name: [] for name, _, _ in methods}  # the clock above, per round
    outside_share = {name: [] for name, _, _ in methods}  # per run: share of its time outside net calls
    wall_times = {name: [] for name, _, _ in methods}
    counts = {}
    try:
        with torch.no_grad():
            for _name, model in nets:  # warm-up
                model(noise, torch.full([batch], 1.0, device=device), labels)
            for rnd in range(rounds):
                current['round'] = rnd
                # Interleaved, and in reverse order every other round so that a drift in load over a
                # round does not favour the methods run first.
                order = methods if rnd % 2 == 0 else methods[::-1]
                for name, gnet, guidance in order:
                    counter = sampling.EvalCounter()
                    synchronize(device)
                    current['run_net_s'] = 0.0
                    w0, c0 = time.perf_counter(), clock()
                    sampling.sample(net, noise, labels, gnet=gnet, guidance=guidance, mode=mode,
                                    num_steps=num_steps, counter=counter)
                    c1 = clock()
                    wall_times[name].append(time.perf_counter() - w0)
                    times[name].append(c1 - c0)
                    outside_share[name].append(1 - current['run_net_s'] / (c1 - c0))
                    counts[name] = (counter.net, counter.gnet)
                log(f'  sampler round {rnd + 1}/{rounds} done')
    finally:
        current['round'] = None
        for handle in handles:
            handle.remove()
    eval_ms = {name: median([t for r in per_round for t in r]) * 1e3 for name, per_round in eval_times.items()}
    eval_ms_round = {name: [median(r) * 1e3 for r in per_round] for name, per_round in eval_times.items()}

    def guide_key(gnet):
        return 'auto_guide' if gnet is auto_guide else 'cfg_guide' if gnet is cfg_guide else None

    def predicted_s(name, gnet, costs_ms):
        n_net, n_gnet = counts[name]
        key = guide_key(gnet)
        return (n_net * costs_ms['main'] + (n_gnet * costs_ms[key] if key else 0)) / 1e3

    rows = []
    for name, gnet, _ in methods:
        n_net, n_gnet = counts[name]
        predicted = predicted_s(name, gnet, eval_ms)
        t = median(times[name])
        rows.append(dict(method=name, evals_net=n_net, evals_gnet=n_gnet, evals_total=n_net + n_gnet,
                         s_per_image=t / batch, s_per_batch=t, s_per_batch_all=times[name],
                         wall_s_per_batch=median(wall_times[name]), wall_s_per_batch_all=wall_times[name],
                         predicted_from_eval_cost_s_per_batch=predicted, sampler_overhead=1 - predicted / t,
                         outside_nets_share=median(outside_share[name]), outside_nets_share_all=outside_share[name]))
    by = {r['method']: r for r in rows}
    gnets = {name: gnet for name, gnet, _ in methods}
    ratios = []
    for base, lim in [('CFG', f'CFG + {int_name}'), ('autoguidance', f'autoguidance + {int_name}')]:
        # Per round: the two runs are adjacent in time, so their ratio cancels most of the load
        # that round had; the median over rounds then drops the rounds where it changed mid-way.
        round_time = [a / b for a, b in zip(times[lim], times[base])]
        round_cost = []
        for rnd in range(rounds):
            costs = {k: v[rnd] for k, v in eval_ms_round.items()}
            round_cost.append(predicted_s(lim, gnets[lim], costs) / predicted_s(base, gnets[base], costs))
        time_ratio = median(round_time)
        # The fastest run of each method is the one least slowed by other work on the machine
        # (timeit's rationale for its minimum): interference only adds time, never removes it.
        fastest_ratio = min(times[lim]) / min(times[base])
        eval_ratio = by[lim]['evals_total'] / by[base]['evals_total']
        cost_ratio = median(round_cost)
        ratios.append(dict(pair=f'{lim} / {base}', fastest_ratio=fastest_ratio,
                           time_ratio=time_ratio, time_ratio_per_round=round_time,
                           time_ratio_of_medians=by[lim]['s_per_batch'] / by[base]['s_per_batch'],
                           time_ratio_iqr=_iqr(round_time),
                           eval_ratio=eval_ratio, cost_weighted_eval_ratio=cost_ratio,
                           cost_weighted_eval_ratio_per_round=round_cost,
                           fastest_vs_eval_ratio=fastest_ratio / eval_ratio - 1,
                           fastest_vs_cost_weighted=fastest_ratio / cost_ratio - 1,
                           rel_diff_vs_eval_ratio=time_ratio / eval_ratio - 1,
                           rel_diff_vs_cost_weighted=time_ratio / cost_ratio - 1))
    cfg_ratio = ratios[0]
    return dict(config=_jsonable(cfg), batch=batch, rounds=rounds,
                clock='wall (CUDA synchronized)' if cuda else 'process CPU time', mode=mode, num_steps=num_steps,
                weight=GUIDANCE_WEIGHT, interval=list(iv), eval_ms_per_batch=eval_ms, eval_ms_per_round=eval_ms_round,
                rows=rows, ratios=ratios,
                target=dict(name='interval/CFG time ratio (fastest runs) within 5% of the cost-weighted evaluation ratio',
                            met=abs(cfg_ratio['fastest_vs_cost_weighted']) <= 0.05,
                            met_vs_plain_eval_ratio=abs(cfg_ratio['fastest_vs_eval_ratio']) <= 0.05,
                            met_by_median_round_ratio=abs(cfg_ratio['rel_diff_vs_cost_weighted']) <= 0.05))


def _iqr(values):
    if len(values) < 2:
        return [float('nan'), float('nan')]
    q = statistics.quantiles(values, n=4)
    return [float(q[0]), float(q[2])]

#----------------------------------------------------------------------------
# 2. Pipeline overhead of generate_zip: wall time outside network evaluations.

def bench_pipeline(cases, device, log, tmpdir):
    import dnnlib
    import generate_zip as gz
    from edmguide import images as imagelib, loading
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
                                        guidance_interval=case.get('interval', INTERVAL),
                                        num_steps=case.get('num_steps', NUM_STEPS),
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


def _smooth_image(rng, hw):
    """A photo-like test image (smooth colour fields plus mild noise): PNG cost depends on content."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(6 * xx * (c + 1) + 4 * yy) * 90 + 128 for c in range(3)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)

#----------------------------------------------------------------------------
# 3. Fréchet distance: the library (tr sqrt(S1 S2) as the nuclear norm of L2^T L1 from Cholesky
# factors, eigh fallback) vs scipy.linalg.sqrtm (upstream formula).

def random_factor(rng, dim, decay=1.2, scale=10.0):
    """A with A A^T an SPD covariance G diag(lambda) G^T / dim, lambda_i ~ i^-decay: a power-law
    spectrum as Inception/DINOv2 feature covariances have (a few large directions, a long tail)."""
    g = rng.standard_normal((dim, dim))
    lam = scale * np.arange(1, dim + 1, dtype=np.float64) ** -decay
    return g * np.sqrt(lam / dim)


def frechet_reference(mu1, sigma1, mu2, sigma2):
    """The upstream computation: scipy.linalg.sqrtm of the (non-symmetric) product."""
    import warnings
    import scipy.linalg
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        root = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    if isinstance(root, tuple):
        root = root[0]
    value = np.square(mu1 - mu2).sum() + np.trace(sigma1 + sigma2 - 2 * root)
    return float(np.real(value))


def frechet_eigenvalue_route(mu1, sigma1, mu2, sigma2):
    """The faster alternative we measured and did not adopt: tr sqrt(S1 S2) as the sum of square
    roots of the eigenvalues of the symmetric L1^T S2 L1 (S1 = L1 L1^T; triangular products when
    Cholesky succeeds). Half the flops of an SVD, but an eigenvalue near round-off (eps |M|) comes
    out with an absolute error of that size, which its square root magnifies to ~sqrt(eps |M|)."""
    import scipy.linalg
    from edmguide.metrics.frechet import _psd_factor
    s1, s2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    factor = _psd_factor(s1)
    if np.allclose(np.triu(factor, 1), 0):  # Cholesky factor: two triangular products
        trmm = scipy.linalg.blas.dtrmm
        m = trmm(1.0, factor, trmm(1.0, factor, s2, side=1, lower=1), side=0, lower=1, trans_a=1)
    else:
        m = factor.T @ s2 @ factor
    eigval = scipy.linalg.eigh(m, eigvals_only=True, overwrite_a=True, check_finite=False)
    root_trace = float(np.sqrt(np.clip(eigval, 0, None)).sum())
    return float(np.square(mu1 - mu2).sum()) + float(np.trace(s1) + np.trace(s2)) - 2 * root_trace


def frechet_rank_deficient(dim, samples):
    """Accuracy when both covariances come from fewer samples than dimensions (singular, so the
    library takes its eigh branch): errors of ours and of sqrtm against the exact value, which the
    centred feature matrices give directly (S = A A^T with A = centred features^T / sqrt(n - 1))."""
    from edmguide.metrics.frechet import frechet_distance
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((dim, dim)) * np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    f1 = rng.standard_normal((samples, dim)) @ mix.T
    f2 = 0.9 * f1 + 0.3 * rng.standard_normal((samples, dim)) @ mix.T
    a1, a2 = [(f - f.mean(0)).T / np.sqrt(samples - 1) for f in (f1, f2)]
    sigma1, sigma2 = a1 @ a1.T, a2 @ a2.T
    mu1, mu2 = f1.mean(0), f2.mean(0)
    exact = (float(np.square(mu1 - mu2).sum()) + float(np.trace(sigma1) + np.trace(sigma2))
             - 2 * float(np.linalg.svd(a1.T @ a2, compute_uv=False).sum()))
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    ref = frechet_reference(mu1, sigma1, mu2, sigma2)
    eig = frechet_eigenvalue_route(mu1, sigma1, mu2, sigma2)
    return dict(samples=samples, fd_exact=exact, ours_rel_err_vs_exact=abs(ours - exact) / abs(exact),
                scipy_rel_err_vs_exact=abs(ref - exact) / abs(exact),
                eigenvalue_route_rel_err_vs_exact=abs(eig - exact) / abs(exact))


def _blas_threads(count):
    """Context limiting numpy/scipy's BLAS to `count` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(count)


def bench_frechet(cfg, log, blas_threads):
    from edmguide.metrics.frechet import _psd_factor, frechet_distance
    dim = cfg['dim']
    rng = np.random.default_rng(0)
    with _blas_threads(blas_threads):  # threadpoolctl limits on construction, so one per block
        # Two sets whose statistics are close (as generated vs reference features). Known factors
        # S = A A^T give an independent exact value: tr sqrt(S1 S2) = nuclear norm of A1^T A2.
        a1 = random_factor(rng, dim)
        a2 = np.concatenate([np.sqrt(0.9) * a1, np.sqrt(0.1) * random_factor(rng, dim, decay=1.1)], axis=1)
        sigma1, sigma2 = a1 @ a1.T, a2 @ a2.T
        mu1 = rng.standard_normal(dim) * 0.3
        mu2 = mu1 + rng.standard_normal(dim) * 0.05
        ours_t, ref_t = [], []
        for _ in range(cfg['repeats']):
            t0 = time.perf_counter()
            ours = frechet_distance(mu1, sigma1, mu2, sigma2)
            ours_t.append(time.perf_counter() - t0)
        log(f'  frechet ours: {median(ours_t):.2f}s')
        for _ in range(cfg['ref_repeats']):
            t0 = time.perf_counter()
            ref = frechet_reference(mu1, sigma1, mu2, sigma2)
            ref_t.append(time.perf_counter() - t0)
        log(f'  frechet scipy sqrtm: {median(ref_t):.2f}s')
        # What bounds any exact route from below: the singular values of one 2048^2 matrix alone.
        cross = _psd_factor(sigma2).T @ _psd_factor(sigma1)
        svd_t, eig_t = [], []
        for _ in range(cfg['repeats']):
            t0 = time.perf_counter()
            np.linalg.svd(cross, compute_uv=False)
            svd_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            eig = frechet_eigenvalue_route(mu1, sigma1, mu2, sigma2)
            eig_t.append(time.perf_counter() - t0)
        log(f'  singular values alone: {median(svd_t):.2f}s, eigenvalue route: {median(eig_t):.2f}s')
        exact_trace = float(np.linalg.svd(a1.T @ a2, compute_uv=False).sum())
    # How both scale with cores: sqrtm's Schur decomposition and triangular recurrence barely use a
    # second thread, the SVD's BLAS does. One interleaved pair per thread count above the main one.
    scaling = []
    for threads in sorted({t for t in (2, 4, 8, os.cpu_count() or 1) if blas_threads < t <= (os.cpu_count() or 1)}):
        with _blas_threads(threads):
            t0 = time.perf_counter()
            frechet_distance(mu1, sigma1, mu2, sigma2)
            t1 = time.perf_counter()
            frechet_reference(mu1, sigma1, mu2, sigma2)
            t2 = time.perf_counter()
        scaling.append(dict(threads=threads, ours_s=t1 - t0, scipy_s=t2 - t1, speedup=(t2 - t1) / (t1 - t0)))
        log(f'  {threads} threads: ours {t1 - t0:.2f}s, sqrtm {t2 - t1:.2f}s')
    trace_sum = float(np.trace(sigma1) + np.trace(sigma2))
    exact = float(np.square(mu1 - mu2).sum()) + trace_sum - 2 * exact_trace
    eig1 = np.linalg.eigvalsh(sigma1)
    factorization = []  # which branch the library's factorisation takes on these inputs (Cholesky or eigh)
    for sig in (sigma1, sigma2):
        try:
            np.linalg.cholesky((sig + sig.T) / 2)
            factorization.append('cholesky')
        except np.linalg.LinAlgError:
            factorization.append('eigh fallback')
    rel = abs(ours - ref) / abs(ref)
    speedup = median(ref_t) / median(ours_t)
    with _blas_threads(blas_threads):
        rank_deficient = frechet_rank_deficient(dim, cfg.get('samples', dim // 2))
    return dict(dim=dim, blas_threads=blas_threads, method='sum of singular values of L2^T L1 (S = L L^T)',
                factorization=factorization, fd_ours=ours, fd_scipy=ref, rel_diff=rel, fd_exact=exact,
                ours_rel_err_vs_exact=abs(ours - exact) / abs(exact), scipy_rel_err_vs_exact=abs(ref - exact) / abs(exact),
                sigma1_condition=float(eig1[-1] / max(eig1[0], 1e-300)),
                rel_diff_of_trace_sum=abs(ours - ref) / trace_sum, trace_sum=trace_sum,
                ours_s=median(ours_t), ours_s_all=ours_t, scipy_s=median(ref_t), scipy_s_all=ref_t, speedup=speedup,
                rank_deficient=rank_deficient, thread_scaling=scaling,
                singular_values_only_s=median(svd_t), exact_route_speedup_bound=median(ref_t) / median(svd_t),
                eigenvalue_route=dict(s=median(eig_t), s_all=eig_t, fd=eig, speedup=median(ref_t) / median(eig_t),
                                      rel_err_vs_exact=abs(eig - exact) / abs(exact)),
                target=dict(name='speedup >= 10x and relative difference <= 1e-9',
                            speedup_met=speedup >= 10, rel_diff_met=rel <= 1e-9))

#----------------------------------------------------------------------------
# 4. Feature extraction throughput of the metrics pipeline (stand-in 2048-d detector).

class StandInDetector(torch.nn.Module):
    """Small conv net: uint8 NCHW -> 2048 pooled features (the Inception-v3 dimension)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 2048, 1))
        self.eval().requires_grad_(False)
        self.seconds = 0.0

    def forward(self, images):
        t0 = time.perf_counter()
        self.to(images.device)
        out = self.body(images.to(torch.float32) / 255).mean(dim=(2, 3))
        synchronize(images.device)
        self.seconds += time.perf_counter() - t0
        return out


def bench_features(cfg, device, log, tmpdir):
    from edmguide.images import encode_png
    from edmguide.metrics import detectors, pipeline, stats as stats_lib
    zip_path = os.path.join(tmpdir, 'features.zip')
    rng = np.random.default_rng(1)
    with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_STORED) as zf:
        base = _smooth_image(rng, (cfg['res'], cfg['res'])).astype(np.int16)
        for k in range(cfg['num_images']):
            img = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
            zf.writestr(f'{k:06d}.png', encode_png(img))
    name = 'bench_standin_fd'
    results = []
    stats_time = {'s': 0.0}
    original_update = stats_lib.FeatureStats.update

    def timed_update(self, features):
        t0 = time.perf_counter()
        original_update(self, features)
        synchronize(features.device)
        stats_time['s'] += time.perf_counter() - t0

    # The library as is: ImageFiles opens the zip once per process, so DataLoader workers need nothing.
    runs = [(0, False)]  # (num_workers, tracemalloc)
    if cfg['num_workers'] > 0:
        runs += [(cfg['num_workers'], False), (cfg['num_workers'], True)]
    else:
        runs += [(0, True)]
    for workers, traced in runs:
        det = StandInDetector()
        detectors.register_metric(name, lambda: det, replace=True)
        stats_time['s'] = 0.0
        stats_lib.FeatureStats.update = timed_update
        try:
            if traced:
                tracemalloc.start()
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                stats = pipeline.compute_stats_for_images(zip_path, [name], max_batch_size=cfg['batch'],
                                                          num_workers=workers, device=device,
                                                          progress=False)
                synchronize(device)
                wall = time.perf_counter() - t0
            traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
        finally:
            if traced:
                tracemalloc.stop()
            stats_lib.FeatureStats.update = original_update
            detectors.unregister_metric(name)
        assert stats['num_images'] == cfg['num_images'] and stats[name]['mu'].shape == (2048,)
        results.append(dict(num_workers=workers, tracemalloc=traced, wall_s=wall, images_per_s=cfg['num_images'] / wall,
                            detector_s=det.seconds, stats_update_s=stats_time['s'],
                            other_s=wall - det.seconds - stats_time['s'],
                            peak_rss_mib=rss.peak / 2**20, peak_rss_increase_mib=(rss.peak - rss.base) / 2**20,
                            tracemalloc_peak_mib=(traced_peak / 2**20 if traced_peak is not None else None)))
        log(f'  features (workers={workers}, tracemalloc={traced}): {cfg["num_images"] / wall:.0f} img/s')
    return dict(num_images=cfg['num_images'], resolution=cfg['res'], batch=cfg['batch'],
                feature_dim=2048, rows=results)

#----------------------------------------------------------------------------
# 5. Precision / speed options (CUDA). UNTESTED ON A GPU: written without access to one; the
# variant construction and output comparison run on the CPU with tiny nets (--precision-on-cpu).

PEAK_TFLOPS_16BIT = [  # dense fp16/bf16 tensor-core peak, by substring of the device name
    ('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4), ('GH200', 989.4),
    ('A100', 312.0), ('L40S', 362.1), ('L40', 181.0), ('A10G', 70.0), ('A10', 125.0),
    ('RTX 4090', 165.2), ('RTX 3090', 71.0), ('V100', 125.0), ('T4', 65.0)]


def peak_tflops(device, override=None):
    if override:
        return float(override)
    if torch.device(device).type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS_16BIT:
        if key in name:
            return value
    return None


class _UNetInputDtype(torch.nn.Module):
    """Wraps a Precond's U-Net so that it runs in `dtype`: casts its input and nothing else. Precond
    itself is called with force_fp32=True and does all its own (float32) arithmetic around it, so
    no part of the network's maths is restated here. (The library picks float16 on CUDA itself;
    this only makes the U-Net dtype selectable, e.g. bfloat16.)"""

    def __init__(self, unet, dtype):
        super().__init__()
        self.unet = unet
        self.dtype = dtype

    def forward(self, x, *args, **kwargs):
        return self.unet(x.to(self.dtype), *args, **kwargs)


def make_variant(net, *, dtype, channels_last=False, compile=False):
    """A callable f(x, sigma, labels) for one option set; the given net is left untouched.
    Attention is computed however the network code computes it (no attention-backend variants:
    a patched forward would duplicate the network's maths, and upstream pickles bring their own
    network source anyway)."""
    model = copy.deepcopy(net)
    model.unet = _UNetInputDtype(model.unet, dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def fn(x, sigma, labels):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x, sigma, labels, force_fp32=True)
    if compile:
        fn = torch.compile(fn)
    return fn


PRECISION_VARIANTS = [  # (name, options); the first is upstream (what Precond itself does on CUDA)
    ('fp16 eager (upstream)', dict(dtype='float16')),
    ('bf16 eager', dict(dtype='bfloat16')),
    ('fp16 channels-last', dict(dtype='float16', channels_last=True)),
    ('fp16 torch.compile', dict(dtype='float16', compile=True)),
    ('fp16 channels-last + compile', dict(dtype='float16', channels_last=True, compile=True)),
    ('bf16 channels-last + compile', dict(dtype='bfloat16', channels_last=True, compile=True)),
]


def bench_precision(cfg, device, log, peak_override=None, allow_compile=True):
    from torch.utils.flop_counter import FlopCounterMode
    results = []
    peak = peak_tflops(device, peak_override)
    batch = cfg['batch']
    for net_name, spec in cfg['nets']:
        net = build_net(spec, 5, device)
        gen = torch.Generator(device).manual_seed(0)
        res, ch = net.img_resolution, net.img_channels
        x = torch.randn([batch, ch, res, res], generator=gen, device=device) * 2.0
        sigma = torch.full([batch], 2.0, device=device)
        labels = torch.eye(net.label_dim, device=device)[torch.arange(batch, device=device) % net.label_dim]
        with torch.no_grad():
            reference32 = net(x, sigma, labels, force_fp32=True)
            with FlopCounterMode(display=False) as counter:
                net(x[:1], sigma[:1], labels[:1], force_fp32=True)
            flops_per_image = counter.get_total_flops()
            upstream = None
            for var_name, opts in PRECISION_VARIANTS:
                row = dict(net=net_name, variant=var_name, options=dict(opts))
                if opts.get('compile') and not allow_compile:
                    row['error'] = 'skipped (torch.compile not run here)'
                    results.append(row)
                    continue
                try:
                    fn = make_variant(net, **dict(opts, dtype=getattr(torch, opts['dtype'])))
                    synchronize(device)
                    t0 = time.perf_counter()
                    out = fn(x, sigma, labels)  # includes compilation for compiled variants
                    synchronize(device)
                    row['first_call_s'] = time.perf_counter() - t0
                    for _ in range(2):
                        fn(x, sigma, labels)
                    times = []
                    for _ in range(cfg['iters']):
                        synchronize(device)
                        t0 = time.perf_counter()
                        fn(x, sigma, labels)
                        synchronize(device)
                        times.append(time.perf_counter() - t0)
                    t = median(times)
                    row.update(s_per_batch=t, images_per_s=batch / t,
                               rel_err_vs_fp32=_rel_err(out, reference32),
                               tflops_achieved=flops_per_image * batch / t / 1e12)
                    if var_name == PRECISION_VARIANTS[0][0]:
                        upstream = out
                    if upstream is not None:
                        row['rel_err_vs_upstream'] = _rel_err(out, upstream)
                    if peak:
                        row['fraction_of_peak'] = row['tflops_achieved'] / peak
                except Exception as exc:  # one failing option must not lose the others
                    row['error'] = f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
                results.append(row)
                log(f'  precision {net_name} / {var_name}: ' +
                    (f'{row["images_per_s"]:.1f} img/s' if 'images_per_s' in row else row['error']))
        base = {r['net']: r for r in results if r['variant'] == PRECISION_VARIANTS[0][0] and 'images_per_s' in r}
        for r in results:
            if r['net'] == net_name and 'images_per_s' in r and net_name in base:
                r['speedup_vs_upstream'] = r['images_per_s'] / base[net_name]['images_per_s']
        results_flops = {net_name: flops_per_image}
        for r in results:
            if r['net'] == net_name:
                r['gflops_per_image_eval'] = results_flops[net_name] / 1e9
        del net
        if torch.device(device).type == 'cuda':
            torch.cuda.empty_cache()
    return dict(batch=batch, peak_tflops=peak, rows=results,
                note='UNTESTED on a GPU: written without access to one; the variants and the output '
                     'comparison were exercised on the CPU with tiny nets only. Attention is computed '
                     'by the network code as it is (attention backends are left to it).')


def _rel_err(a, b):
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))

#----------------------------------------------------------------------------
# Report.

def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def render_markdown(result):
    m = result['machine']
    out = [f"# edmguide benchmarks ({m['device']}, {m['date']})", '',
           f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_logical_cores', m.get('cpu_count'))} logical cores"
           f"{', GPU ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']} ({m['torch_threads']} thread(s)), "
           f"numpy {m['numpy']}, scipy {m.get('scipy', '?')}, Python {m['python']}. "
           f"Load average at start {m.get('load_average_start')}, at end {m.get('load_average_end')}. "
           f"Mode: {'quick' if result['quick'] else 'full'}; total {result['total_s']:.0f} s.", '']
    s = result.get('sampler')
    if s:
        out += [f"## 1. Sampler (batch {s['batch']}, {s['num_steps']} steps, numerics {s['mode']}, w = {s['weight']})", '',
                'Per-evaluation time of each net on this batch: ' +
                ', '.join(f'{k} {v:.1f} ms' for k, v in s['eval_ms_per_batch'].items()) + '.', '',
                f"Times are {s['clock']}: medians of {s['rounds']} interleaved rounds (order reversed every "
                f"other round). Per-evaluation costs come from forward hooks on every net call inside those "
                f"runs, so the prediction sees the same load; wall-clock medians in the last column.", '',
                'The time outside network calls is measured directly in each run (run time minus the hooked '
                'net calls); "time vs prediction" compares the median time with evaluations x median cost per '
                'evaluation, which slow outlier evaluations inflate.', '',
                '| method | evals net + gnet | s / image | s / batch | predicted from eval cost | time vs prediction '
                '| outside net calls | wall s / batch |',
                '|---|---|---|---|---|---|---|---|']
        for r in s['rows']:
            outside = r.get('outside_nets_share', float('nan'))
            out.append(f"| {r['method']} | {r['evals_net']} + {r['evals_gnet']} = {r['evals_total']} | "
                       f"{r['s_per_image']:.4f} | {r['s_per_batch']:.3f} | {r['predicted_from_eval_cost_s_per_batch']:.3f} | "
                       f"{100 * (r['s_per_batch'] / r['predicted_from_eval_cost_s_per_batch'] - 1):+.1f}% | {100 * outside:.2f}% | {r['wall_s_per_batch']:.3f} |")
        out += ['', 'Time ratios two ways: of the fastest run of each method (interference on a shared machine only '
                'adds time, so the fastest run is the least disturbed, as in `timeit`), and the median over rounds of '
                'the per-round ratio (the two runs of a pair are adjacent in time), with its quartiles.', '',
                '| ratio | fastest runs | median per round (quartiles) | evaluation ratio | cost-weighted eval ratio '
                '| fastest vs eval | fastest vs cost-weighted | median vs cost-weighted |',
                '|---|---|---|---|---|---|---|---|']
        for r in s['ratios']:
            q = r.get('time_ratio_iqr', [float('nan')] * 2)
            out.append(f"| {r['pair']} | {r['fastest_ratio']:.3f} | {r['time_ratio']:.3f} ({q[0]:.3f}-{q[1]:.3f}) | "
                       f"{r['eval_ratio']:.3f} | {r['cost_weighted_eval_ratio']:.3f} | "
                       f"{100 * r['fastest_vs_eval_ratio']:+.1f}% | {100 * r['fastest_vs_cost_weighted']:+.1f}% | "
                       f"{100 * r['rel_diff_vs_cost_weighted']:+.1f}% |")
        t = s['target']
        out += ['', f"Target (interval/CFG time ratio of the fastest runs within 5% of the cost-weighted evaluation "
                f"ratio): {'met' if t['met'] else 'NOT met'}; within 5% of the plain evaluation ratio (which counts a "
                f"guide evaluation as costing the same as a main-net one): "
                f"{'met' if t['met_vs_plain_eval_ratio'] else 'NOT met'}; by the median per-round ratio: "
                f"{'met' if t['met_by_median_round_ratio'] else 'NOT met'}.", '']
    p = result.get('pipeline')
    if p:
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
    f = result.get('frechet')
    if f:
        out += [f"## 3. Fréchet distance, {f['dim']} dimensions (float64, {f['blas_threads']} BLAS thread(s))", '',
                '| implementation | time s (median) | FD |', '|---|---|---|',
                f"| ours (Cholesky factors, sum of singular values of L2ᵀL1; {' / '.join(f.get('factorization', []))}) "
                f"| {f['ours_s']:.2f} | {f['fd_ours']:.12g} |",
                f"| scipy.linalg.sqrtm (upstream formula) | {f['scipy_s']:.2f} | {f['fd_scipy']:.12g} |",
                f"| exact (nuclear norm of A1ᵀA2 from the generating factors A, no factorisation) | | {f['fd_exact']:.12g} |"]
        ev = f.get('eigenvalue_route')
        if ev:
            out += [f"| not adopted: square roots of the eigenvalues of L1ᵀS2L1 | {ev['s']:.2f} | {ev['fd']:.12g} |",
                    f"| not adopted: the singular values of L2ᵀL1 alone (the floor of our route) | {f['singular_values_only_s']:.2f} | |"]
        out += ['',
                f"Relative error vs exact: ours {f['ours_rel_err_vs_exact']:.2e}, scipy sqrtm {f['scipy_rel_err_vs_exact']:.2e} "
                f"(condition number of S1: {f['sigma1_condition']:.1e}).", '',
                f"Speedup {f['speedup']:.1f}x (target >= 10x: {'met' if f['target']['speedup_met'] else 'NOT met'}); "
                f"relative difference {f['rel_diff']:.2e} (target <= 1e-9: {'met' if f['target']['rel_diff_met'] else 'NOT met'}); "
                f"difference relative to tr(S1)+tr(S2) = {f['rel_diff_of_trace_sum']:.2e}.", '']
        rd = f.get('rank_deficient')
        if rd:
            out += [f"Singular covariances ({rd['samples']} samples in {f['dim']} dimensions, exact FD {rd['fd_exact']:.6g}): "
                    f"relative error vs exact: ours {rd['ours_rel_err_vs_exact']:.2e}, scipy sqrtm {rd['scipy_rel_err_vs_exact']:.2e}"
                    + (f", eigenvalue route {rd['eigenvalue_route_rel_err_vs_exact']:.2e}" if 'eigenvalue_route_rel_err_vs_exact' in rd else '')
                    + '.', '']
        if f.get('thread_scaling'):
            out += ['More BLAS threads (one run each): ' + '; '.join(
                f"{t['threads']} threads: ours {t['ours_s']:.2f} s, sqrtm {t['scipy_s']:.2f} s, {t['speedup']:.1f}x"
                for t in f['thread_scaling']) + '.', '']
        if ev:
            out += [f"Why the speed target is missed: computing the singular values alone takes {f['singular_values_only_s']:.2f} s, "
                    f"so no route through them can be more than {f['exact_route_speedup_bound']:.1f}x faster than sqrtm here. "
                    f"The eigenvalue route is {ev['speedup']:.1f}x faster, with error {ev['rel_err_vs_exact']:.1e} vs exact on the "
                    f"full-rank case but {rd['eigenvalue_route_rel_err_vs_exact']:.1e} on the singular one.", '']
    ft = result.get('features')
    if ft:
        out += [f"## 4. Feature extraction ({ft['num_images']} PNGs {ft['resolution']}x{ft['resolution']} from a zip, "
                f"stand-in 2048-d conv detector, batch {ft['batch']})", '',
                '| loader workers | images/s | detector s | stats update s | loading + other s | peak RSS MiB (increase) | tracemalloc peak MiB |',
                '|---|---|---|---|---|---|---|']
        for r in ft['rows']:
            label = f"{r['num_workers']}" + (', tracemalloc on' if r['tracemalloc'] else '')
            out.append(f"| {label} | {r['images_per_s']:.0f} | "
                       f"{r['detector_s']:.2f} | {r['stats_update_s']:.2f} | {r['other_s']:.2f} | "
                       f"{r['peak_rss_mib']:.0f} ({r['peak_rss_increase_mib']:+.0f}) | "
                       f"{'' if r['tracemalloc_peak_mib'] is None else format(r['tracemalloc_peak_mib'], '.1f')} |")
        out.append('')
    pr = result.get('precision')
    out += ['## 5. Precision and speed options (CUDA)', '']
    if pr is None or pr.get('skipped'):
        out += [f"Skipped: {pr['skipped'] if pr else 'not run'}.", '']
    else:
        out += [f"**{pr['note']}** Batch {pr['batch']}; peak {pr['peak_tflops'] or 'unknown'} TFLOP/s (dense 16-bit).", '',
                '| net | variant | images/s | speedup | rel. err vs fp32 | rel. err vs upstream | TFLOP/s | fraction of peak | first call s |',
                '|---|---|---|---|---|---|---|---|---|']
        for r in pr['rows']:
            if 'error' in r:
                out.append(f"| {r['net']} | {r['variant']} | {r['error']} | | | | | | |")
                continue
            frac = f"{100 * r['fraction_of_peak']:.1f}%" if 'fraction_of_peak' in r else 'n/a'
            out.append(f"| {r['net']} | {r['variant']} | {r['images_per_s']:.1f} | {r.get('speedup_vs_upstream', float('nan')):.2f}x | "
                       f"{r['rel_err_vs_fp32']:.2e} | {r.get('rel_err_vs_upstream', float('nan')):.2e} | {r['tflops_achieved']:.2f} | {frac} | "
                       f"{r['first_call_s']:.1f} |")
        out.append('')
    for key in SECTIONS:
        if key + '_error' in result:
            out += [f"**Section {key} failed:** {result[key + '_error']}", '']
    return '\n'.join(out)

#----------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes (seconds); for the smoke test')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'), help='output folder')
    parser.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    parser.add_argument('--threads', type=int, default=1, help='torch and BLAS threads (default 1: stable timings on shared machines)')
    parser.add_argument('--sections', default=','.join(SECTIONS), help=f'comma-separated subset of {",".join(SECTIONS)}')
    parser.add_argument('--precision-on-cpu', action='store_true',
                        help='run section 5 on the CPU with tiny nets (checks the code path, timings meaningless)')
    parser.add_argument('--peak-tflops', type=float, default=None, help='override the 16-bit peak used for the fraction of peak')
    parser.add_argument('--name', default=None, help='output file stem (default <device>-<date>, or quick-<device>)')
    args = parser.parse_args(argv)

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f'unknown sections: {", ".join(sorted(unknown))}')
    cfg = CONFIGS['quick' if args.quick else device.type if device.type in CONFIGS else 'cpu']

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = dict(quick=args.quick, machine=machine_info(device, args.threads), sections=sections)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='edmguide-bench-') as tmpdir:
        def precision():
            if device.type == 'cuda':
                return bench_precision(cfg['precision'], device, log, args.peak_tflops)
            if args.precision_on_cpu:
                return bench_precision(CONFIGS['quick' if args.quick else 'cpu']['precision'],
                                       device, log, args.peak_tflops, allow_compile=False)
            return dict(skipped='no CUDA device on this machine (code path written, untested on a GPU)')
        jobs = dict(sampler=('1. sampler', lambda: bench_sampler(cfg['sampler'], device, log)),
                    pipeline=('2. pipeline overhead', lambda: bench_pipeline(cfg['pipeline'], device, log, tmpdir)),
                    frechet=('3. Fréchet distance', lambda: bench_frechet(cfg['frechet'], log, args.threads)),
                    features=('4. feature extraction', lambda: bench_features(cfg['features'], device, log, tmpdir)),
                    precision=('5. precision options', precision))
        failed = []
        for key in SECTIONS:
            if key in sections:
                title, job = jobs[key]
                log(title)
                try:
                    result[key] = job()
                except Exception as exc:  # keep the other sections' results
                    import traceback
                    traceback.print_exc()
                    result[key + '_error'] = f'{type(exc).__name__}: {exc}'
                    failed.append(key)
    result['total_s'] = time.perf_counter() - t_start
    if hasattr(os, 'getloadavg'):
        result['machine']['load_average_end'] = [round(v, 2) for v in os.getloadavg()]

    stem = args.name or (f'quick-{device.type}' if args.quick else f'{device.type}-{datetime.date.today().isoformat()}')
    os.makedirs(args.out, exist_ok=True)
    markdown = render_markdown(result)
    with open(os.path.join(args.out, stem + '.json'), 'w') as f:
        json.dump(_jsonable(result), f, indent=1)
    with open(os.path.join(args.out, stem + '.md'), 'w') as f:
        f.write(markdown + '\n')
    print(markdown)
    if failed:
        sys.exit(f'error: sections failed: {", ".join(failed)}')
    return result


if __name__ == '__main__':
    main()
