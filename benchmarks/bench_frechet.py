"""Benchmark 3: Fréchet distance at 2048 dimensions: the CLI's whole cost against the fastest peer's
bare linear algebra (torchmetrics' form) and scipy.linalg.sqrtm (upstream's), time and exactness."""

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import CONFIGS, GUIDANCE_WEIGHT, INTERVAL, NUM_STEPS, _iqr, _jsonable, _rel_err  # noqa: F401

SECTION = 'frechet'
TITLE = '3. Fréchet distance'
ORDER = 30

#----------------------------------------------------------------------------
# 3. Fréchet distance. "Ours, CLI path" is everything `calculate_metrics.py` does with a covariance
# pair: the reference check at load time (symmetry, finiteness, the factorisation that proves it
# positive semi-definite) and the distance (the generated set's factorisation, the product, the
# Gram eigenvectors), with the factor cache emptied first. The peer is the form torchmetrics uses:
# the eigenvalues of the float64 product S1 S2 (a general, non-symmetric eigenproblem), their complex
# square roots, real parts summed; it checks nothing.

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


def frechet_peer(mu1, sigma1, mu2, sigma2):
    """The fastest peer's linear algebra (torchmetrics' form), in float64 torch on the CPU."""
    s1, s2 = torch.from_numpy(np.asarray(sigma1, np.float64)), torch.from_numpy(np.asarray(sigma2, np.float64))
    root = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    mean = float(np.square(np.asarray(mu1) - np.asarray(mu2)).sum())
    return mean + float(s1.trace() + s2.trace() - 2 * root)


def frechet_cli_path(mu_gen, sigma_gen, ref_entry):
    """What the CLI pays for one distance, from a freshly loaded reference entry (read-only arrays)."""
    from edmguide.metrics import frechet, stats
    frechet.clear_factor_cache()
    stats.check_frechet_entry(ref_entry, 'fid', 'benchmark')
    return frechet.frechet_distance(mu_gen, sigma_gen, ref_entry['mu'], ref_entry['sigma'])


def previous_cli_path(mu1, sigma1, mu2, sigma2):
    """The method before issue 21 (for the record): eigvalsh for the reference check, Cholesky factors
    (eigh with all columns kept when singular), the singular values of L2^T L1 by an SVD."""
    def factor(s):
        try:
            return np.linalg.cholesky(s)
        except np.linalg.LinAlgError:
            lam, vec = np.linalg.eigh(s)
            return vec * np.sqrt(np.clip(lam, 0, None))
    np.linalg.eigvalsh(sigma2)
    s1, s2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root = np.linalg.svd(factor(s2).T @ factor(s1), compute_uv=False).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * root)


def _read_only_entry(mu, sigma):
    entry = {'mu': mu.copy(), 'sigma': sigma.copy()}
    for array in entry.values():
        array.setflags(write=False)
    return entry


def _blas_threads(count):
    """Context limiting numpy/scipy's BLAS to `count` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(count)


@contextlib.contextmanager
def _all_threads(count):
    """numpy/scipy BLAS and torch both limited to `count` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with _blas_threads(count):
            yield
    finally:
        torch.set_num_threads(before)


def compare_cli_and_peer(mu_gen, sigma_gen, ref_entry, sigma_ref, threads, repeats, previous=False):
    """Interleaved timings at `threads` (the order of the methods reversed every other round, so that
    a drift in the machine's load favours none); the peer gets a writable copy of the reference's
    sigma (torch wraps it without a copy). `previous`: also time the method before issue 21."""
    names = ('ours', 'peer', 'previous') if previous else ('ours', 'peer')
    times, values = {name: [] for name in names}, {}
    with _all_threads(threads):
        for i in range(repeats):
            for which in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                if which == 'ours':
                    values[which] = frechet_cli_path(mu_gen, sigma_gen, ref_entry)
                elif which == 'peer':
                    values[which] = frechet_peer(mu_gen, sigma_gen, ref_entry['mu'], sigma_ref)
                else:
                    values[which] = previous_cli_path(mu_gen, sigma_gen, ref_entry['mu'], sigma_ref)
                times[which].append(time.perf_counter() - t0)
    out = dict(threads=threads, ratio_min=min(times['ours']) / min(times['peer']),
               ratio_median=median(times['ours']) / median(times['peer']))
    for name in names:
        out.update({f'{name}_s_min': min(times[name]), f'{name}_s_median': median(times[name]),
                    f'{name}_s_all': times[name], f'fd_{name}': values[name]})
    return out


def frechet_rank_deficient(dim, samples):
    """Accuracy when both covariances come from fewer samples than dimensions (singular: the
    eigendecomposition branch, null space dropped): errors of ours, the peer and sqrtm against the exact
    value, which the centred feature matrices give directly (S = A A^T with A = centred features^T /
    sqrt(n - 1)), and the distance of a set to its own statistics."""
    from edmguide.metrics.frechet import covariance_factor, frechet_distance
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((dim, dim)) * np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    f1 = rng.standard_normal((samples, dim)) @ mix.T
    f2 = 0.9 * f1 + 0.3 * rng.standard_normal((samples, dim)) @ mix.T
    a1, a2 = [(f - f.mean(0)).T / np.sqrt(samples - 1) for f in (f1, f2)]
    sigma1, sigma2 = a1 @ a1.T, a2 @ a2.T
    mu1, mu2 = f1.mean(0), f2.mean(0)
    exact = (float(np.square(mu1 - mu2).sum()) + float(np.trace(sigma1) + np.trace(sigma2))
             - 2 * float(np.linalg.svd(a1.T @ a2, compute_uv=False).sum()))
    t0 = time.perf_counter()
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    ours_s = time.perf_counter() - t0
    ref = frechet_reference(mu1, sigma1, mu2, sigma2)
    peer = frechet_peer(mu1, sigma1, mu2, sigma2)
    previous = previous_cli_path(mu1, sigma1, mu2, sigma2)
    return dict(samples=samples, fd_exact=exact, ours_s=ours_s, rank=covariance_factor(sigma1).rank,
                ours_rel_err_vs_exact=abs(ours - exact) / abs(exact),
                scipy_rel_err_vs_exact=abs(ref - exact) / abs(exact),
                peer_rel_err_vs_exact=abs(peer - exact) / abs(exact),
                previous_rel_err_vs_exact=abs(previous - exact) / abs(exact),
                self_ours=frechet_distance(mu1, sigma1, mu1, sigma1), self_peer=frechet_peer(mu1, sigma1, mu1, sigma1))


def bench_frechet(cfg, log, blas_threads):
    from edmguide.metrics.frechet import covariance_factor, frechet_distance
    dim = cfg['dim']
    rng = np.random.default_rng(0)
    # Two sets whose statistics are close (as generated vs reference features). Known factors
    # S = A A^T give an independent exact value: tr sqrt(S1 S2) = nuclear norm of A1^T A2.
    a1 = random_factor(rng, dim)
    a2 = np.concatenate([np.sqrt(0.9) * a1, np.sqrt(0.1) * random_factor(rng, dim, decay=1.1)], axis=1)
    sigma1, sigma2 = a1 @ a1.T, a2 @ a2.T
    mu1 = rng.standard_normal(dim) * 0.3
    mu2 = mu1 + rng.standard_normal(dim) * 0.05
    ref_entry = _read_only_entry(mu2, sigma2)
    default_threads = os.cpu_count() or 1
    comparisons = []
    for threads in sorted({blas_threads, default_threads}):
        comparisons.append(compare_cli_and_peer(mu1, sigma1, ref_entry, sigma2, threads, cfg['repeats'] + 1,
                                                previous=(threads == blas_threads)))
        c = comparisons[-1]
        log(f"  {threads} thread(s): ours (CLI path) {c['ours_s_min']:.2f}s, peer eigvals {c['peer_s_min']:.2f}s "
            f"(best of {len(c['ours_s_all'])}; ratio {c['ratio_min']:.2f})")
    main = comparisons[0]
    with _all_threads(blas_threads):
        exact_trace = float(np.linalg.svd(a1.T @ a2, compute_uv=False).sum())
        previous, previous_s = main['fd_previous'], main['previous_s_min']
        log(f'  previous method (eigvalsh check + SVD), same rounds: {previous_s:.2f}s')
        ref_t = []
        for _ in range(cfg['ref_repeats']):
            t0 = time.perf_counter()
            ref = frechet_reference(mu1, sigma1, mu2, sigma2)
            ref_t.append(time.perf_counter() - t0)
        log(f'  frechet scipy sqrtm: {median(ref_t):.2f}s')
        rank_deficient = frechet_rank_deficient(dim, cfg.get('samples', dim // 2))
        self_ours = frechet_distance(mu2, sigma2, mu2, sigma2)
        self_peer = frechet_peer(mu2, sigma2, mu2, sigma2)
    ours, peer = main['fd_ours'], main['fd_peer']
    trace_sum = float(np.trace(sigma1) + np.trace(sigma2))
    exact = float(np.square(mu1 - mu2).sum()) + trace_sum - 2 * exact_trace
    eig1 = np.linalg.eigvalsh(sigma1)
    rel = abs(ours - ref) / abs(ref)
    speedup = median(ref_t) / main['ours_s_min']
    return dict(dim=dim, blas_threads=blas_threads, method='Gram eigenvectors of L2^T L1 (S = L L^T), SVD of the round-off block',
                factorization=[covariance_factor(s).method for s in (sigma1, sigma2)],
                comparisons=comparisons, fd_ours=ours, fd_peer=peer, fd_scipy=ref, fd_previous=previous, rel_diff=rel,
                fd_exact=exact, ours_rel_err_vs_exact=abs(ours - exact) / abs(exact),
                peer_rel_err_vs_exact=abs(peer - exact) / abs(exact),
                scipy_rel_err_vs_exact=abs(ref - exact) / abs(exact),
                previous_rel_err_vs_exact=abs(previous - exact) / abs(exact),
                sigma1_condition=float(eig1[-1] / max(eig1[0], 1e-300)),
                rel_diff_of_trace_sum=abs(ours - ref) / trace_sum, trace_sum=trace_sum,
                ours_s=main['ours_s_min'], previous_s=previous_s, scipy_s=median(ref_t), scipy_s_all=ref_t,
                speedup=speedup, self_ours=self_ours, self_peer=self_peer, rank_deficient=rank_deficient,
                target=dict(name='CLI path no slower than the peer (best of the interleaved runs, every thread count) '
                                 'and relative difference to sqrtm <= 1e-9',
                            speed_met=all(c['ratio_min'] <= 1 for c in comparisons), rel_diff_met=rel <= 1e-9))


def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    return bench_frechet(ctx.cfg['frechet'], ctx.log, ctx.threads)


def markdown(f):
    """This section's part of the combined markdown report."""
    out = [f"## 3. Fréchet distance, {f['dim']} dimensions (float64)", '',
           '| threads | ours, CLI path (reference check + factorisations + distance), s | peer: eigvals of S1 S2 (torchmetrics form), s | ratio |',
           '|---|---|---|---|']
    for c in f['comparisons']:
        out.append(f"| {c['threads']} | {c['ours_s_min']:.2f} (median {c['ours_s_median']:.2f}) "
                   f"| {c['peer_s_min']:.2f} (median {c['peer_s_median']:.2f}) | {c['ratio_min']:.2f} |")
    rd = f['rank_deficient']
    out += ['', f"Best of {len(f['comparisons'][0]['ours_s_all'])} interleaved runs each (medians in brackets); "
                f"factorisations: {' / '.join(f['factorization'])}. Times below: best of the same interleaved "
                f"runs (sqrtm: {len(f['scipy_s_all'])} run(s)).", '',
            f"| implementation ({f['blas_threads']} thread(s)) | time s | FD | rel. error vs exact | "
            f"singular case ({rd['samples']} samples, rank {rd['rank']}): rel. error | a set against itself |",
            '|---|---|---|---|---|---|',
            f"| ours | {f['ours_s']:.2f} | {f['fd_ours']:.12g} | {f['ours_rel_err_vs_exact']:.1e} | "
            f"{rd['ours_rel_err_vs_exact']:.1e} | {f['self_ours']:.3g} |",
            f"| peer: eigvals of S1 S2 | {f['comparisons'][0]['peer_s_min']:.2f} | {f['fd_peer']:.12g} | "
            f"{f['peer_rel_err_vs_exact']:.1e} | {rd['peer_rel_err_vs_exact']:.1e} | {f['self_peer']:.3g} |",
            f"| previous (eigvalsh check, SVD of L2ᵀL1) | {f['previous_s']:.2f} | {f['fd_previous']:.12g} | "
            f"{f['previous_rel_err_vs_exact']:.1e} | {rd['previous_rel_err_vs_exact']:.1e} | |",
            f"| scipy.linalg.sqrtm (upstream formula) | {f['scipy_s']:.2f} | {f['fd_scipy']:.12g} | "
            f"{f['scipy_rel_err_vs_exact']:.1e} | {rd['scipy_rel_err_vs_exact']:.1e} | |",
            f"| exact (nuclear norm of A1ᵀA2 from the generating factors) | | {f['fd_exact']:.12g} | | | 0 |", '',
            f"Condition number of S1: {f['sigma1_condition']:.1e}. Target ({f['target']['name']}): speed "
            f"{'met' if f['target']['speed_met'] else 'NOT met'}, accuracy {'met' if f['target']['rel_diff_met'] else 'NOT met'} "
            f"(relative difference to sqrtm {f['rel_diff']:.1e}; {f['speedup']:.1f}x faster than sqrtm).", '']
    return out
