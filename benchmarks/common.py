"""Helpers shared by the benchmark modules (benchmarks/bench_*.py): sizes, random-weight networks,
timers, machine information. Not a benchmark itself (the runner only loads files named bench_*.py).
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

def _iqr(values):
    if len(values) < 2:
        return [float('nan'), float('nan')]
    q = statistics.quantiles(values, n=4)
    return [float(q[0]), float(q[2])]


def _rel_err(a, b):
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _smooth_image(rng, hw):
    """A photo-like test image (smooth colour fields plus mild noise): PNG cost depends on content."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(6 * xx * (c + 1) + 4 * yy) * 90 + 128 for c in range(3)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
