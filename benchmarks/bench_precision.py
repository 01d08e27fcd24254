"""Benchmark 5: precision and speed options (CUDA only; UNTESTED on a GPU)."""

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import CONFIGS, GUIDANCE_WEIGHT, INTERVAL, NUM_STEPS, _iqr, _jsonable, _rel_err  # noqa: F401

SECTION = 'precision'
TITLE = '5. precision options'
ORDER = 50

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


def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    if ctx.device.type == 'cuda':
        return bench_precision(ctx.cfg['precision'], ctx.device, ctx.log, ctx.options.peak_tflops)
    if ctx.options.precision_on_cpu:
        return bench_precision(CONFIGS['quick' if ctx.quick else 'cpu']['precision'], ctx.device, ctx.log,
                               ctx.options.peak_tflops, allow_compile=False)
    return dict(skipped='no CUDA device on this machine (code path written, untested on a GPU)')


def markdown(pr):
    """This section's part of the combined markdown report."""
    out = []
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
    return out
