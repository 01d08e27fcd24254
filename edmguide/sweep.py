"""Guidance sweeps: metrics of many (guiding net, weight, interval) settings over the same seeds.

The settings are the product of weights and intervals (w = 1, no guidance, once if it is among
the weights). For each batch of
seeds all settings are sampled together by `generation.generate_setting_batches`, so the steps that
settings share (everything before the first step where their weights differ) are computed once,
and every setting's images are bit-identical to what `calculate_metrics.py gen` computes for it
with the same seeds and batch size. Each setting's statistics accumulate in the accumulators of
`metrics.kinds`; they are checkpointed atomically in the output folder every few batches,
so rerunning the same command continues where it stopped. `sweep_report` writes the results.

Interval syntax (`parse_intervals`): `all` (every step), `[a, b]` (inclusive step indices, as
`--guidance_interval`), `(lo, hi]` (noise range, as `--guidance_sigma`), and the grid
`[a0..a1, b0..b1]`: every [a, b] with a0 <= a <= a1, b0 <= b <= b1 and a <= b (either side may be
a single index, e.g. `[10..20, 22]`, or take a step, e.g. `[9..21:2, 15..27:2]`). Weights (`parse_weights`): `1.5,2,2.5` or the inclusive range
`start:stop:step`, in decimal arithmetic (1.0:4.0:0.1 is 31 weights 1.0, 1.1, ..., 4.0 exactly).
"""

import dataclasses
import decimal
import json
import math
import os
import pickle
import re

import torch

import dnnlib
from edmguide import images as imagelib, loading, sampling, seeds as seedlib, sweep_report
from edmguide.errors import UserError
from edmguide.generation import generate_setting_batches, pick_device, resolve_guidance
from edmguide.guidance import Interval, parse_interval, parse_sigma_range
from edmguide.metrics import kinds, pipeline, stats as stats_lib
from edmguide.outputs import check_output_dir
from edmguide.progress import progress_bar
from edmguide.schedule import SamplerOptions
from torch_utils import distributed as dist

SETTINGS_FILE = 'sweep-settings.json'

#----------------------------------------------------------------------------
# Parsing weights and intervals.

def parse_weights(text, option='--guidance'):
    """'1.5,2,2.5' or 'start:stop:step' (inclusive) -> floats as written (decimal arithmetic), unique, in order."""
    def number(part):
        try:
            value = decimal.Decimal(part.strip())
        except decimal.InvalidOperation:
            raise UserError(f'{option} {text!r}: {part.strip()!r} is not a number') from None
        if not value.is_finite():
            raise UserError(f'{option} {text!r}: weights must be finite')
        return value
    text = str(text)
    if ':' in text:
        parts = text.split(':')
        if len(parts) != 3:
            raise UserError(f'{option} {text!r}: a range is written start:stop:step')
        start, stop, step = (number(p) for p in parts)
        if step <= 0 or stop < start:
            raise UserError(f'{option} {text!r}: need step > 0 and start <= stop')
        count = int((stop - start) / step) + 1
        if count > 10000:
            raise UserError(f'{option} {text!r}: {count} weights is too many')
        values = [start + k * step for k in range(count)]
    else:
        values = [number(p) for p in text.split(',') if p.strip()]
        if not values:
            raise UserError(f'{option} {text!r}: no weights given')
    out = []
    for value in values:
        if float(value) not in out:
            out.append(float(value))
    return out


_SPAN = r'\s*(\d+)\s*(?:\.\.\s*(\d+)\s*(?::\s*(\d+)\s*)?)?'
_GRID = re.compile(r'^\[' + _SPAN + ',' + _SPAN + r'\]$')


def parse_intervals(texts, option='--interval'):
    """`--interval` values -> list of Interval (grids expanded, duplicates dropped)."""
    out = []
    for text in texts:
        stripped = text.strip()
        if stripped.lower() == 'all':
            found = [Interval('all')]
        elif '..' in stripped:
            m = _GRID.match(stripped)
            if m is None:
                raise UserError(f'{option} {text!r}: a grid is written "[a0..a1, b0..b1]" (optional steps: "a0..a1:2")')
            a0, a1, a_step, b0, b1, b_step = (int(v) if v is not None else None for v in m.groups())
            a1, b1 = a0 if a1 is None else a1, b0 if b1 is None else b1
            if a0 > a1 or b0 > b1 or a_step == 0 or b_step == 0:
                raise UserError(f'{option} {text!r}: each range must run from low to high with a positive step')
            found = [Interval('steps', (a, b), grid=stripped) for a in range(a0, a1 + 1, a_step or 1)
                     for b in range(b0, b1 + 1, b_step or 1) if a <= b]
            if not found:
                raise UserError(f'{option} {text!r}: the grid has no interval with start <= stop')
        elif stripped.startswith('['):
            steps = parse_interval(stripped)
            if steps is None:
                raise UserError(f'{option} {text!r}: write "all" for guidance at every step')
            found = [Interval('steps', tuple(steps))]
        elif stripped.startswith('('):
            found = [Interval('sigma', sigma=parse_sigma_range(stripped))]
        else:
            raise UserError(f'{option} {text!r}: expected all, "[a, b]" (steps), "(lo, hi]" (noise levels) '
                            f'or a grid "[a0..a1, b0..b1]"')
        out += [i for i in found if i not in out]
    if not out:
        raise UserError(f'{option}: no interval given')
    return out


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the sweep: guiding net (a key of the sweep's `guides`, None for no guidance),
    weight and Interval (None for no guidance)."""
    guide: str
    weight: float
    interval: Interval = None


def expand_settings(weights, intervals, guides):
    """weights x intervals x guides; w = 1 (no guidance), if among the weights, once and first."""
    settings = [Setting(None, 1.0)] if 1 in weights else []
    for guide in guides:
        for interval in intervals:
            settings += [Setting(guide, w, interval) for w in weights if w != 1]
    return settings

#----------------------------------------------------------------------------
# Checkpoints: per-rank sums, the previous generation kept until the next one is complete.

class _Checkpoints:
    def __init__(self, outdir, rank):
        self.path = os.path.join(outdir, f'checkpoint-rank{rank}.pkl')
        self.prev = self.path + '.prev'

    def _read(self, path):
        try:
            with open(path, 'rb') as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            return None

    def save(self, state):
        imagelib.atomic_write(self.path + '.new', pickle.dumps(state))
        if os.path.exists(self.path):
            os.replace(self.path, self.prev)
        os.replace(self.path + '.new', self.path)

    def load(self, device):
        """The newest state that every rank has (ranks write at the same batches, but a crash may
        stop one rank between its write and another's)."""
        states = [s for s in (self._read(self.path), self._read(self.prev)) if s is not None]
        done = max((s['batches_done'] for s in states), default=0)
        if dist.get_world_size() > 1:
            t = torch.tensor([done], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            done = int(t)
        if done == 0:
            return None
        for state in states:
            if state['batches_done'] == done:
                return state
        raise UserError(f'{os.path.dirname(self.path)}: the ranks\' checkpoints do not match; delete them to start over')

    def exists(self):
        return os.path.exists(self.path) or os.path.exists(self.prev)


def _check_outdir(outdir, record):
    """Refuse an outdir whose checkpoints were made with other settings; take over one without any."""
    path = os.path.join(outdir, SETTINGS_FILE)
    record = json.loads(json.dumps(record))
    previous = None
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            previous = json.load(f)
    has_checkpoints = any(n.startswith('checkpoint-rank') for n in os.listdir(outdir))
    if previous is not None and previous != record and has_checkpoints:
        changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
        raise UserError(f'{outdir} holds a sweep with other settings ({", ".join(changed)}); '
                        f'rerun the same command or choose another --outdir')
    return previous != record


#----------------------------------------------------------------------------
# The sweep.

def setting_guidance(schedule, settings):
    """The GuidanceSchedule of every setting, resolved on the sweep's one `Schedule`."""
    out, noted = [], set()
    for s in settings:
        if s.interval is None or s.weight == 1:
            out.append(schedule.guidance(None))
        else:
            out.append(resolve_guidance(schedule, s.weight, s.interval, note=s.interval not in noted))
            noted.add(s.interval)  # a note on a paper-rounded noise range once per interval, not per weight
    return out


def _describe(setting, schedule, sigmas, evals):
    """The JSON fields of one setting (without metric values)."""
    levels = sigmas.tolist()
    if not schedule.is_active:
        interval = sigma = None
    else:
        found = schedule.to_step_indices(sigmas)
        interval = list(found[0][:2]) if found and setting.interval.kind != 'all' else None
        lo, hi, _ = schedule.segments[0]
        sigma = [lo, hi] if setting.interval.kind != 'all' else [levels[-1], levels[0]]
    return dict(guide=setting.guide, guidance=setting.weight,
                label=setting.interval.label if schedule.is_active else 'none',
                interval=interval, sigma=sigma, grid=setting.interval.grid if setting.interval else None,
                evals_main=evals.net, evals_guide=evals.gnet)


def run_sweep(net, encoder, settings, schedule, *, guides, ref, ref_path, metrics, outdir, num_images, seed=0,
              max_batch_size=32, class_idx=None, device='cpu', record=None, checkpoint_every=8, progress=True):
    """Measure every setting on seeds seed..seed+num_images-1 on `schedule` (the sweep's one
    `Schedule`: every setting's interval is resolved on it); returns (records, summary).

    `guides`: {name: guiding net}; `record`: what identifies the run besides the settings (network
    paths, ...) for the resume check. Checkpoints go to `outdir` every `checkpoint_every` batches.
    Records: one dict per setting (guide, guidance, label, interval, sigma, grid, evals_main,
    evals_guide, num_images and every metric). Summary: evaluations per image of the sweep against
    separate runs.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        os.makedirs(outdir, exist_ok=True)  # fails early on a bad location
    dist.barrier()
    dims = pipeline.reference_dims(ref, metrics, ref_path)
    dets = pipeline.build_detectors(metrics)
    schedules, sigmas = setting_guidance(schedule, settings), schedule.sigmas
    branches = [(guides[s.guide] if s.guide is not None else None, g) for s, g in zip(settings, schedules)]
    keys = sampling.step_keys(branches, schedule)
    made, separate = sampling.tree_evaluations(keys)
    records = [_describe(s, g, sigmas, sampling.tree_evaluations([k])[0]) for s, g, k in zip(settings, schedules, keys)]

    full_record = dict(record or {}, metrics=list(metrics), num_images=num_images, seed=seed, batch=max_batch_size,
                       class_idx=class_idx, world_size=world_size, sampler=schedule.options.as_record(),
                       settings=[[s.guide, s.weight, s.interval.label if s.interval else None] for s in settings])
    failure = None
    try:
        rewrite = _check_outdir(outdir, full_record)
    except UserError as exc:
        failure = str(exc)
    pipeline.raise_on_every_rank(failure, device)
    dist.barrier()
    if rank == 0 and rewrite:
        imagelib.atomic_write(os.path.join(outdir, SETTINGS_FILE), json.dumps(full_record, indent=1).encode())

    checkpoints = _Checkpoints(outdir, rank)
    accs = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in settings]
    state = checkpoints.load(device)
    done = 0
    if state is not None:
        done = state['batches_done']
        for row, saved in zip(accs, state['accumulators']):
            for acc, acc_state in zip(row, saved):
                acc.load_state_dict(acc_state)
    all_batches = pipeline.metric_chunks(num_images, max_batch_size)
    step_images = pipeline.metric_step_images(num_images, max_batch_size)
    images_done = sum(step_images[i] for i in range(min(done, len(all_batches))))
    saving = 1 - (made.net + made.gnet) / (separate.net + separate.gnet)
    bar = progress_bar(total=len(settings) * num_images, initial=len(settings) * images_done, unit='img',
                       desc=f'Sweep ({len(settings)} settings)', leave=False, dynamic_ncols=True,
                       disable=(True if not progress or rank != 0 else None))
    bar.set_postfix_str(f'{made.net + made.gnet} of {separate.net + separate.gnet} evals/img, {saving:.0%} saved')
    # Every rank feeds every rank's features in seed order (pipeline.feed_step), so all ranks hold
    # the same accumulators, equal to a single process's; the generator's own barrier is not needed.
    flat = {(i, j): acc for i, row in enumerate(accs) for j, acc in enumerate(row)}
    batches = generate_setting_batches(net, encoder, range(seed, seed + num_images), branches, schedule,
                                       class_idx=class_idx, device=device, sync=False, batches=all_batches[done:])
    batch_idx = done
    with bar, torch.no_grad():
        while batch_idx < len(all_batches):
            features = {}
            try:
                batch = next(batches, None)
                if batch is not None:
                    for i, images in enumerate(batch.images):
                        for j, feats in enumerate(pipeline.measure_features(images, metrics, dets, dims,
                                                                            'generated images').values()):
                            features[(i, j)] = feats
            except UserError as exc:
                failure = str(exc)
            pipeline.feed_step(flat, features, device, failure)
            bar.update(len(settings) * step_images[batch_idx])
            batch_idx += 1
            if batch_idx % checkpoint_every == 0:
                _save(checkpoints, batch_idx, accs)
    if batch_idx != done or state is None:
        _save(checkpoints, len(all_batches), accs)
    for record_, row in zip(records, accs):
        for acc, name in zip(row, metrics):
            if acc.num != num_images:
                raise UserError(f'generated {acc.num} images, expected {num_images}')
            values = pipeline.metric_results(name, acc, ref, metrics, ref_path, device)
            record_.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})  # null, never NaN
        record_['num_images'] = num_images
    summary = dnnlib.EasyDict(settings=len(settings), evals_sweep=dataclasses.asdict(made),
                              evals_separate=dataclasses.asdict(separate), saving=saving)
    return records, summary


def _save(checkpoints, batches_done, accs):
    checkpoints.save(dict(batches_done=batches_done, accumulators=[[a.state_dict() for a in row] for row in accs]))

#
#----------------------------------------------------------------------------
# The command-line job.

def sweep_command(net_path, ref_path, weights, intervals, outdir, *, gnet_path=None, metrics=None, num_images=50000,
                  seed=0, max_batch_size=32, class_idx=None, sampler=None, device=None, checkpoint_every=8,
                  progress=True):
    """`calculate_metrics.py sweep`: parse, load, run, write the report (rank 0); returns the lines to print.
    `sampler`: the `SamplerOptions` (None: defaults)."""
    sampler = sampler or SamplerOptions()
    weights = parse_weights(weights)
    intervals = parse_intervals(intervals or ['all'])
    for w in weights:
        for interval in intervals:
            sampler.check_guidance(w, interval, '--guidance')
    guided = any(w != 1 for w in weights)
    if guided and gnet_path is None:
        raise UserError('Please specify --gnet when using guidance')
    check_output_dir(outdir, '--outdir')  # before any work
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path)  # fail early, before loading networks
    metrics = pipeline.resolve_metrics(metrics, ref, ref_path)
    pipeline.reference_dims(ref, metrics, ref_path)
    net, encoder, gnet = loading.load_networks(net_path, gnet_path if guided else None, device)
    guide = loading.network_stem(gnet_path) if guided else None
    settings = expand_settings(weights, intervals, [guide] if guided else [])
    record = dict(net=net_path, gnet=gnet_path if guided else None, ref=ref_path, device=device.type)  # type: ranks differ in index
    schedule = sampler.schedule(net, device=device)
    records, summary = run_sweep(net, encoder, settings, schedule, guides={guide: gnet}, ref=ref, ref_path=ref_path,
                                 metrics=metrics, outdir=outdir, num_images=num_images, seed=seed,
                                 max_batch_size=max_batch_size, class_idx=class_idx, device=device,
                                 record=record, checkpoint_every=checkpoint_every, progress=progress)
    if dist.get_rank() != 0:
        return []
    sweep_report.write_report(outdir, records, pipeline.result_names(metrics), summary)
    return summary_lines(records, pipeline.result_names(metrics), summary, outdir)


def summary_lines(records, metrics, summary, outdir):
    """`<metric> = <value>` of the best setting per metric, the evaluation saving and where the report is."""
    lines = []
    fixed = {'guide', 'guidance', 'label', 'interval', 'sigma', 'grid', 'evals_main', 'evals_guide', 'num_images'}
    for name in dict.fromkeys(k for r in records for k in r if k not in fixed):  # metrics' result names
        best = sweep_report.best_record(records, name)
        if best is not None:
            lines.append(f'{name} = {best[name]:g}  (best: w = {best["guidance"]:g}, interval {best["label"]})')
    made = summary.evals_sweep['net'] + summary.evals_sweep['gnet']
    alone = summary.evals_separate['net'] + summary.evals_separate['gnet']
    lines.append(f'evaluations per image: {made} for {summary.settings} settings, {alone} as separate runs '
                 f'({summary.saving:.1%} saved)')
    lines.append(f'results: {os.path.join(outdir, "sweep.md")}, {os.path.join(outdir, "sweep.jsonl")}')
    return lines


#----------------------------------------------------------------------------
