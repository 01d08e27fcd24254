"""Benchmark 4: feature-extraction throughput of the metrics pipeline."""

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import CONFIGS, GUIDANCE_WEIGHT, INTERVAL, NUM_STEPS, _iqr, _jsonable, _rel_err, _smooth_image  # noqa: F401

SECTION = 'features'
TITLE = '4. feature extraction'
ORDER = 40

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
    from edmguide.util.images import encode_png
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


def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    return bench_features(ctx.cfg['features'], ctx.device, ctx.log, ctx.tmpdir)


def markdown(ft):
    """This section's part of the combined markdown report."""
    out = []
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
    return out
