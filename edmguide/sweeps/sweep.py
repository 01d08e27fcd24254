"""Guidance sweeps: metrics of many (guiding net, weight, interval) settings over the same seeds.

The settings are the product of weights and intervals (w = 1, no guidance, once if it is among
the weights). For each batch of
seeds all settings are sampled together by `generation.generate_setting_batches`, so the steps that
settings share (everything before the first step where their weights differ) are computed once,
and every setting's images are bit-identical to what `calculate_metrics.py gen` computes for it
with the same seeds and batch size. Each setting's statistics accumulate in the accumulators of
`metrics.kinds`; they are checkpointed atomically in the output folder every few batches
(`.npz`, never pickle; growing states appended chunk by chunk), so rerunning the same command
continues where it stopped. The folder's settings (`sweep-settings.json`, input files by SHA-256,
see `digests`) must prove that its checkpoints and results are this sweep's, else the run is
refused (or, with `overwrite`, they are discarded). `sweep_report` writes the results; a dry
rendering with placeholder values runs before the first image. The sweep asks its schedule for
everything sampler-specific (`guidance`, `levels`, `guided_steps`, `tree_evaluations`), so DiT's
sampler (`dit.DiTSchedule`, guided by the network's null class) sweeps the same way.

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
import io
import os
import re
import zipfile

import numpy as np
import torch

import dnnlib
from edmguide.nets import digests, loading
from edmguide.util import images as imagelib
from edmguide.sweeps import sweep_report
from edmguide.util.errors import UserError
from edmguide.jobs.generation import generate_setting_batches, pick_device, resolve_guidance
from edmguide.sampler.guidance import Interval, check_weight, parse_interval, parse_sigma_range
from edmguide.metrics import kinds, pipeline, stats as stats_lib
from edmguide.util.outputs import check_output_dir
from edmguide.util.progress import progress_bar
from edmguide.sampler.schedule import SamplerOptions
from torch_utils import distributed as dist

SETTINGS_FILE = 'sweep-settings.json'
MAX_WEIGHTS = 10000     # weights of one --guidance
MAX_INTERVALS = 10000   # intervals of all --interval options together (grids counted before expanding)
MAX_SETTINGS = 10000    # weights x intervals
RESUME_HINT = 'rerun the same command to continue from the last checkpoint in --outdir'

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
        try:  # the count is bounded before it becomes an int or a list (1e-999999999 overflows Decimal)
            with decimal.localcontext(decimal.Context(prec=40, traps=[decimal.Overflow, decimal.InvalidOperation])):
                span = (stop - start) / step
        except decimal.DecimalException:
            span = None
        if span is None or span >= MAX_WEIGHTS:
            raise UserError(f'{option} {text!r}: more than {MAX_WEIGHTS} weights')
        values = [start + k * step for k in range(int(span) + 1)]
    else:
        values = [number(p) for p in text.split(',') if p.strip()]
        if not values:
            raise UserError(f'{option} {text!r}: no weights given')
    out = []
    for value in values:
        if not math.isfinite(float(value)):  # e.g. 1e999: a finite decimal, but no float
            raise UserError(f'{option} {text!r}: {value} is too large for a weight')
        if float(value) not in out:
            out.append(float(value))
    return out


_SPAN = r'\s*(\d+)\s*(?:\.\.\s*(\d+)\s*(?::\s*(\d+)\s*)?)?'
_GRID = re.compile(r'^\[' + _SPAN + ',' + _SPAN + r'\]$')


def _span(values):
    """A range of the grid syntax as written canonically: '10', '10..20' or '9..21:2'."""
    if len(values) == 1:
        return str(values[0])
    return f'{values[0]}..{values[-1]}' + (f':{values.step}' if values.step != 1 else '')


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
            a_step, b_step = a_step or 1, b_step or 1
            count = ((a1 - a0) // a_step + 1) * ((b1 - b0) // b_step + 1)  # len(range) overflows on huge ints
            if count > MAX_INTERVALS - len(out):  # bounded before it is expanded
                raise UserError(f'{option} {text!r}: more than {MAX_INTERVALS} intervals')
            starts, stops = range(a0, a1 + 1, a_step), range(b0, b1 + 1, b_step)
            grid = f'[{_span(starts)}, {_span(stops)}]'  # one spelling per grid: figures are named by it
            found = [Interval('steps', (a, b), grid=grid) for a in starts for b in stops if a <= b]
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
    guided = sum(w != 1 for w in weights) * len(intervals) * len(guides)
    if guided > MAX_SETTINGS:
        raise UserError(f'{guided} settings (weights x intervals) is more than {MAX_SETTINGS}; sweep them in parts')
    settings = [Setting(None, 1.0)] if 1 in weights else []
    for guide in guides:
        for interval in intervals:
            settings += [Setting(guide, w, interval) for w in weights if w != 1]
    return settings

#----------------------------------------------------------------------------
# Checkpoints: per-rank .npz files (read without pickle), the previous generation kept until the
# next one is complete.

CHECKPOINT_PREFIX = 'checkpoint-rank'
_CHECKPOINT_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile)


def _npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Checkpoints:
    """Rank `rank`'s checkpoints in `outdir`, all `.npz` read with `allow_pickle=False` (a crafted
    file cannot run code):

    - `checkpoint-rank<r>.npz`, the newest, and `checkpoint-rank<r>.npz.prev`, the one before: the
      number of batches done, the sweep's fingerprint (what it measured, for `load` to compare),
      the fixed-size states (Fréchet sums) and the names of the chunk files that hold the rest;
    - `checkpoint-rank<r>-<first>-<stop>.npz`: the states that grow with the images (precision/recall
      features) of batches first..stop-1 only, written once, so that the cost of a checkpoint does
      not grow with the run.

    Keys are `<setting>.<metric>.<field>` (indices into the sweep's settings and metrics).
    """

    def __init__(self, outdir, rank, fingerprint, metrics):
        self.outdir, self.rank, self.fingerprint = outdir, rank, fingerprint
        self.appends = [kinds.get_kind(m).appends for m in metrics]
        self.path = os.path.join(outdir, f'{CHECKPOINT_PREFIX}{rank}.npz')
        self.prev = self.path + '.prev'
        self.chunks = []        # chunk file names of the newest checkpoint
        self.saved = {}         # (setting, metric) -> batches of an appending accumulator already in chunks
        self.batches_done = 0

    def _problem(self, path, reason):
        return UserError(f'{path}: {reason}; delete the checkpoints in {self.outdir} or give --overwrite to start over')

    def _read(self, path):
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            int(data['batches_done']), str(data['fingerprint'])
        except _CHECKPOINT_ERRORS as exc:
            raise self._problem(path, f'not a checkpoint this program can read ({_first_line(exc)})') from None
        return data

    def save(self, batches_done, accs):
        arrays = dict(batches_done=np.int64(batches_done), fingerprint=np.str_(self.fingerprint))
        chunk = {}
        for i, row in enumerate(accs):
            for j, acc in enumerate(row):
                if self.appends[j]:
                    state = acc.state_dict(first_batch=self.saved.get((i, j), 0))
                    chunk.update({f'{i}.{j}.{k}': np.asarray(v) for k, v in state.items()})
                else:
                    arrays.update({f'{i}.{j}.{k}': np.asarray(v) for k, v in acc.state_dict().items()})
        chunks = list(self.chunks)
        if chunk:
            name = f'{CHECKPOINT_PREFIX}{self.rank}-{self.batches_done:06d}-{batches_done:06d}.npz'
            imagelib.atomic_write(os.path.join(self.outdir, name), _npz_bytes(chunk))  # before the file naming it
            chunks.append(name)
        arrays['chunks'] = np.array(chunks, dtype=np.str_)
        imagelib.atomic_write(self.path + '.new', _npz_bytes(arrays))
        if os.path.exists(self.path):
            os.replace(self.path, self.prev)
        os.replace(self.path + '.new', self.path)
        self.chunks, self.batches_done = chunks, batches_done
        for i, row in enumerate(accs):
            for j, acc in enumerate(row):
                if self.appends[j]:
                    self.saved[(i, j)] = acc.num_batches

    def load(self, accs, metrics, dims, device):
        """Load the newest state that every rank has into `accs` (on `device`, where the next
        features come from); returns the batches done (0: nothing to resume). Ranks write at the same
        batches, but a crash may stop one rank between its write and another's."""
        problem = None
        try:
            states = [(p, s) for p in (self.path, self.prev) for s in [self._read(p)] if s is not None]
        except UserError as exc:
            states, problem = [], exc  # raised after the all-reduce, which every rank must reach
        done = max((int(s['batches_done']) for _, s in states), default=0)
        if dist.get_world_size() > 1:
            t = torch.tensor([done], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            done = int(t)
        if problem is not None:
            raise problem
        if done == 0:
            return 0
        path, state = next(((p, s) for p, s in states if int(s['batches_done']) == done), (None, None))
        if state is None:
            raise UserError(f'{self.outdir}: the ranks\' checkpoints do not match; delete them or give --overwrite '
                            f'to start over')
        if str(state['fingerprint']) != self.fingerprint:
            try:
                what = digests.difference(json.loads(str(state['fingerprint'])), json.loads(self.fingerprint))
            except ValueError:
                what = 'an unknown sweep'
            raise self._problem(path, f'a checkpoint of a sweep made with {what}, not of this one')
        try:
            self._load_states(state, accs, metrics, dims, device)
        except _CHECKPOINT_ERRORS as exc:
            raise self._problem(path, f'a checkpoint of the wrong structure ({_first_line(exc)})') from None
        self.chunks, self.batches_done = [str(c) for c in state['chunks']], done
        return done

    def _load_states(self, state, accs, metrics, dims, device):
        chunks = []
        for name in state['chunks']:
            name = str(name)
            if os.path.basename(name) != name or not name.startswith(CHECKPOINT_PREFIX):
                raise ValueError(f'chunk name {name!r}')
            with np.load(os.path.join(self.outdir, name), allow_pickle=False) as npz:
                chunks.append({k: npz[k] for k in npz.files})
        for i, row in enumerate(accs):
            for j, (acc, metric) in enumerate(zip(row, metrics)):
                key, dim = f'{i}.{j}.', dims[metric]
                if self.appends[j]:
                    sizes = np.concatenate([c[key + 'sizes'] for c in chunks] or [np.zeros(0, np.int64)])
                    parts = [c[key + 'features'] for c in chunks if c[key + 'features'].shape[0]]
                    features = np.concatenate(parts) if parts else np.zeros((0, dim), np.float16)
                    if (features.dtype != np.float16 or features.ndim != 2 or features.shape[1] != dim
                            or sizes.ndim != 1 or sizes.dtype.kind not in 'iu' or (sizes < 0).any()
                            or int(sizes.sum()) != features.shape[0]):
                        raise ValueError(f'setting {i}, {metric}: features {features.dtype} {list(features.shape)}')
                    acc.load_state_dict({'features': features, 'sizes': sizes}, device=device)
                    self.saved[(i, j)] = len(sizes)
                else:
                    sub = {k[len(key):]: v for k, v in state.items() if k.startswith(key)}
                    num = sub['num']
                    shapes = {'sum': (dim,), 'outer': (dim, dim)}
                    if (num.shape != () or num.dtype.kind not in 'iu' or int(num) < 0 or set(sub) - {'num', 'sum', 'outer'}
                            or ('sum' in sub) != ('outer' in sub) or ('sum' in sub) != (int(num) > 0)
                            or any(sub[k].dtype != np.float64 or sub[k].shape != shape
                                   for k, shape in shapes.items() if k in sub)):
                        raise ValueError(f'setting {i}, {metric}: sums of the wrong shape or type')
                    acc.load_state_dict(sub, device=device)
        extra = [k for k in state if k.split('.')[0].isdigit() and int(k.split('.')[0]) >= len(accs)]
        if extra:
            raise ValueError(f'{len(accs)} settings, but entries for more ({extra[0]})')

    def remove_all(self):
        """Every rank's checkpoint files (rank 0, under --overwrite)."""
        for name in os.listdir(self.outdir):
            if name.startswith(CHECKPOINT_PREFIX):
                os.remove(os.path.join(self.outdir, name))


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {lines[0]}' if lines else type(exc).__name__


def _read_settings(path):
    """(settings, problem): (None, None) if the file is missing, (None, reason) if it is not a JSON object."""
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding='utf-8') as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:
        return None, _first_line(exc)
    if not isinstance(settings, dict):
        return None, f'it holds a {type(settings).__name__}, not a JSON object'
    return settings, None


def _work_files(outdir):
    """What a sweep leaves in `outdir` that another sweep must not take over: checkpoints and results."""
    return sorted(n for n in os.listdir(outdir) if n.startswith(CHECKPOINT_PREFIX) or n == 'sweep.jsonl')


def _check_outdir(outdir, record, overwrite=False):
    """Refuse an outdir whose checkpoints or results cannot be proven to come from `record`'s sweep
    (other settings or input files, sweep-settings.json missing or unreadable) unless `overwrite`;
    returns True if sweep-settings.json is to be (re)written (and, with `overwrite`, what was
    there discarded)."""
    path = os.path.join(outdir, SETTINGS_FILE)
    record = json.loads(json.dumps(record))
    previous, problem = _read_settings(path)
    if digests.same(previous, record):
        return False
    work = _work_files(outdir)
    if work and not overwrite:
        advice = 'rerun the same command, give --overwrite to discard them, or choose another --outdir'
        if problem is not None:
            raise UserError(f'{path}: cannot read it ({problem}), so nothing proves which sweep made the '
                            f'{len(work)} checkpoint and result files in {outdir}; {advice}')
        if previous is None:
            raise UserError(f'{outdir} holds {len(work)} checkpoint and result files but no {SETTINGS_FILE}, so '
                            f'nothing proves which sweep made them; {advice}')
        if digests.is_legacy(previous) and previous == digests.legacy_form(record):
            raise UserError(f'{outdir} holds a sweep of an older version of this program (pickled checkpoints, '
                            f'network paths without their contents), which this version does not resume; '
                            f'give --overwrite to start over, or choose another --outdir')
        raise UserError(f'{outdir} holds a sweep made with {digests.difference(previous, record)}; {advice}')
    return True


def _discard(outdir):
    """Remove what `_work_files` lists and the report beside it (rank 0, under --overwrite)."""
    report = re.compile(r'^(sweep\.md|(sweep|heatmap)-.*\.png)$')
    for name in _work_files(outdir) + [n for n in os.listdir(outdir) if report.match(n)]:
        os.remove(os.path.join(outdir, name))

#----------------------------------------------------------------------------
# The sweep.

def setting_guidance(schedule, settings):
    """The GuidanceSchedule of every setting, resolved on the sweep's one schedule (`Schedule`, or
    another sampler's duck-typed one such as `dit.DiTSchedule`; a noise range that guides no step of
    it is refused in one line naming the levels)."""
    out, noted = [], set()
    for s in settings:
        if s.interval is None or s.weight == 1:
            out.append(schedule.guidance(None))
        else:
            out.append(resolve_guidance(schedule, s.weight, s.interval, note=s.interval not in noted))
            noted.add(s.interval)  # a note on a paper-rounded noise range once per interval, not per weight
    return out


def _describe(setting, guidance, schedule, evals):
    """The JSON fields of one setting (without metric values); `schedule`: the sweep's (its
    `levels` and `guided_steps`)."""
    levels = list(schedule.levels)
    if not guidance.is_active:
        interval = sigma = None
    else:
        found = schedule.guided_steps(guidance)
        interval = list(found) if found and setting.interval.kind != 'all' else None
        lo, hi, _ = guidance.segments[0]
        sigma = [lo, hi if math.isfinite(hi) else 'inf'] if setting.interval.kind != 'all' else [levels[-1], levels[0]]
    return dict(guide=setting.guide, guidance=setting.weight,
                label=setting.interval.label if guidance.is_active else 'none',
                interval=interval, sigma=sigma, grid=setting.interval.grid if setting.interval else None,
                evals_main=evals.net, evals_guide=evals.gnet)


def run_sweep(net, encoder, settings, schedule, *, guides, ref, ref_path, metrics, outdir, num_images, seed=0,
              max_batch_size=32, class_idx=None, device='cpu', record=None, checkpoint_every=8, progress=True,
              overwrite=False):
    """Measure every setting on seeds seed..seed+num_images-1 on `schedule` (the sweep's one
    `Schedule`, or a duck-typed one of another sampler such as `dit.DiTSchedule`: every setting's
    interval is resolved on it, and its `tree_evaluations` counts the evaluations); returns
    (records, summary).

    `guides`: {name: guiding net} (DiT: {'null-class': None}, the network guides itself); `record`: what identifies the run besides the settings (input
    files as `digests.input_record` under 'inputs', ...) for the resume check. Checkpoints go to
    `outdir` every `checkpoint_every` batches; checkpoints and results that cannot be proven to be
    this sweep's are refused, or discarded with `overwrite`. The report is rendered once with
    placeholder values before the first image, so a setting it cannot show stops the run at once.
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
    schedules = setting_guidance(schedule, settings)
    branches = [(guides[s.guide] if s.guide is not None else None, g) for s, g in zip(settings, schedules)]
    made, separate = schedule.tree_evaluations(branches)
    records = [_describe(s, g, schedule, schedule.tree_evaluations([b])[0])
               for s, g, b in zip(settings, schedules, branches)]
    saving = 1 - (made.net + made.gnet) / (separate.net + separate.gnet)
    summary = dnnlib.EasyDict(settings=len(settings), evals_sweep=dataclasses.asdict(made),
                              evals_separate=dataclasses.asdict(separate), saving=saving)
    if rank == 0:  # a dry run of the report: whatever it cannot show fails now, not after the work
        placeholder = {name: 1.0 for name in pipeline.result_names(metrics)}
        sweep_report.render_report([dict(r, num_images=num_images, **placeholder) for r in records],
                                   pipeline.result_names(metrics), summary)

    full_record = dict(record or {}, metrics=list(metrics), num_images=num_images, seed=seed, batch=max_batch_size,
                       class_idx=class_idx, world_size=world_size, sampler=schedule.options.as_record(),
                       settings=[[s.guide, s.weight, s.interval.label if s.interval else None] for s in settings])
    failure = None
    try:
        rewrite = _check_outdir(outdir, full_record, overwrite) if rank == 0 else False
    except UserError as exc:
        failure = str(exc)
    pipeline.raise_on_every_rank(failure, device)
    if rank == 0 and rewrite:
        _discard(outdir)  # only with overwrite is there anything
        imagelib.atomic_write(os.path.join(outdir, SETTINGS_FILE), json.dumps(full_record, indent=1).encode())
    dist.barrier()

    fingerprint = json.dumps(digests.comparable(full_record), sort_keys=True)
    checkpoints = _Checkpoints(outdir, rank, fingerprint, metrics)
    accs = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in settings]
    done = 0
    try:
        done = checkpoints.load(accs, metrics, dims, device)
    except UserError as exc:
        failure = str(exc)
    try:
        pipeline.raise_on_every_rank(failure, device)
    except UserError:
        if not overwrite:
            raise
        dist.barrier()  # every rank has stopped reading before rank 0 removes the checkpoints
        if rank == 0:
            checkpoints.remove_all()
        dist.barrier()
        checkpoints = _Checkpoints(outdir, rank, fingerprint, metrics)
        accs = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in settings]
        done, failure = 0, None
    all_batches = pipeline.metric_chunks(num_images, max_batch_size)
    step_images = pipeline.metric_step_images(num_images, max_batch_size)
    images_done = sum(step_images[i] for i in range(min(done, len(all_batches))))
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
                checkpoints.save(batch_idx, accs)
    if checkpoints.batches_done != len(all_batches) or not os.path.exists(checkpoints.path):
        checkpoints.save(len(all_batches), accs)  # unless the last checkpoint of the loop was the end
    for record_, row in zip(records, accs):
        for acc, name in zip(row, metrics):
            if acc.num != num_images:
                raise UserError(f'generated {acc.num} images, expected {num_images}')
            values = pipeline.metric_results(name, acc, ref, metrics, ref_path, device)
            record_.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})  # null, never NaN
        record_['num_images'] = num_images
    return records, summary

#
#----------------------------------------------------------------------------
# The command-line job.

def sweep_command(net_path, ref_path, weights, intervals, outdir, *, gnet_path=None, metrics=None, num_images=50000,
                  seed=0, max_batch_size=32, class_idx=None, sampler=None, dit=None, device=None, checkpoint_every=8,
                  progress=True, overwrite=False, vae=None):
    """`calculate_metrics.py sweep`: parse, load, run, write the report (rank 0); returns the lines to print.

    `sampler`: the `SamplerOptions` (None: defaults). `dit`: a `dit_generation.DiTModel` for DiT
    mode (DiT's own sampler, guided by the network itself with its null class; `net_path`,
    `gnet_path` and `sampler` are not used). A rerun resumes from the checkpoints in `outdir` if
    they were made with the same settings and input files (compared by content); `overwrite`
    discards checkpoints and results that cannot be."""
    weights = parse_weights(weights)
    intervals = parse_intervals(intervals or ['all'])
    guided = any(w != 1 for w in weights)
    if dit is not None:
        schedule = dit.schedule()  # DiT's levels need no network: every interval is resolved now
        class_idx = dit.check_class(class_idx)
        for w in weights:
            check_weight(w, '--guidance')
        for interval in intervals:
            schedule.guidance(2.0, interval, what='--interval')
        guide = dit.GUIDE if guided else None
    else:
        sampler = sampler or SamplerOptions()
        for w in weights:
            sampler.check_weight(w, '--guidance')
        for interval in intervals:
            sampler.check_guidance(2.0, interval, '--interval')
        if guided and gnet_path is None:
            raise UserError('Please specify --gnet when using guidance')
        guide = loading.network_stem(gnet_path) if guided else None
    settings = expand_settings(weights, intervals, [guide] if guided else [])
    check_output_dir(outdir, '--outdir')  # before any work
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path)  # fail early, before loading networks
    metrics = pipeline.resolve_metrics(metrics, ref, ref_path)
    pipeline.reference_dims(ref, metrics, ref_path)
    if dit is not None:
        record = dict(dit.record(ref_path), device=device.type)  # input files by content, once per run
        net, encoder = dit.load(device)
        gnet, schedule = None, dit.schedule(device)
    else:
        inputs = digests.input_record(net=net_path, gnet=gnet_path if guided else None, ref=ref_path)  # once per run
        net, encoder, gnet = loading.load_networks(net_path, gnet_path if guided else None, device, vae=vae)
        record = dict(inputs=inputs, device=device.type)  # type: ranks differ in index
        if vae is not None:
            record['vae'] = vae
        schedule = sampler.schedule(net, device=device)
    records, summary = run_sweep(net, encoder, settings, schedule, guides={guide: gnet}, ref=ref, ref_path=ref_path,
                                 metrics=metrics, outdir=outdir, num_images=num_images, seed=seed,
                                 max_batch_size=max_batch_size, class_idx=class_idx, device=device,
                                 record=record, checkpoint_every=checkpoint_every, progress=progress,
                                 overwrite=overwrite)
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
