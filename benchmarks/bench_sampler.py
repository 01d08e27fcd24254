"""Benchmark 1: sampler time and network evaluations per image for each guidance method."""

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import CONFIGS, GUIDANCE_WEIGHT, INTERVAL, NUM_STEPS, _iqr, _jsonable, _rel_err  # noqa: F401

SECTION = 'sampler'
TITLE = '1. sampler'
ORDER = 10

#----------------------------------------------------------------------------
# 1. Sampler: time and evaluations per image for each guidance method.

def bench_sampler(cfg, device, log):
    from edmguide.sampler import sampling
    from edmguide.sampler.guidance import GuidanceSchedule, Interval
    net = build_net(cfg['main'], 1, device)
    cfg_guide = build_net(cfg['cfg_guide'], 2, device)
    auto_guide = build_net(cfg['auto_guide'], 3, device)
    batch, mode = cfg['batch'], 'gi'
    num_steps, iv = cfg.get('num_steps', NUM_STEPS), cfg.get('interval', INTERVAL)
    schedule = sampling.SamplerOptions(num_steps=num_steps, mode=mode).schedule(net, device=device)
    interval = schedule.guidance(GUIDANCE_WEIGHT, Interval.of_steps(*iv))
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
                    sampling.sample(net, noise, labels, gnet=gnet, guidance=guidance, schedule=schedule,
                                    counter=counter)
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


def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    return bench_sampler(ctx.cfg['sampler'], ctx.device, ctx.log)


def markdown(s):
    """This section's part of the combined markdown report."""
    out = []
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
    return out
