"""Per-seed random numbers, seed lists and the batching of seeds over processes.

Every image gets its own generator, so its noise, class label and churn noise depend only on
its seed -- never on the batch size, its position in the batch or the number of processes.
"""

import bisect
import collections.abc
import itertools
import re

import numpy as np
import torch

from edmguide.util.errors import UserError

#----------------------------------------------------------------------------
# One generator per seed.

class StackedRandomGenerator:
    """A batch of independent generators, one per seed (seeded with seed % 2**32).

    Each method draws the per-sample shape `size[1:]` from every generator in order and stacks
    the results, so row k is what seed k alone would have produced.
    """

    def __init__(self, device, seeds):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32)) for s in self.seeds]

    def _check(self, size):
        size = list(size)
        if not size or size[0] != len(self.generators):
            raise ValueError(f'first dimension of {size} must equal the number of seeds ({len(self.generators)})')
        return size

    def randn(self, size, **kwargs):
        size = self._check(size)
        return torch.stack([torch.randn(size[1:], generator=g, **kwargs) for g in self.generators])

    def randn_like(self, x):
        return self.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device)

    def randint(self, *args, size, **kwargs):
        size = self._check(size)
        return torch.stack([torch.randint(*args, size=size[1:], generator=g, **kwargs) for g in self.generators])

    def get_state(self):
        """Every generator's state (for `set_state`), e.g. to replay the same draws for another branch."""
        return [g.get_state() for g in self.generators]

    def set_state(self, state):
        for g, s in zip(self.generators, state):
            g.set_state(s)


def draw_noise_and_labels(rng, net, class_idx=None, mode='edm2'):
    """Initial noise [B, C, R, R] (float32), then one-hot labels [B, label_dim] or None.

    `class_idx`: None (a random class per seed), one class for every seed, or a list with one class
    per seed.

    Draw order per seed as upstream: noise first, then the label index. In 'edm2' mode the label
    is drawn even for a fixed class (then overwritten), in 'gi' mode a fixed class skips the draw;
    either way the noise is the same.
    """
    if mode not in ('edm2', 'gi'):
        raise ValueError(f"mode must be 'edm2' or 'gi', got {mode!r}")
    batch = len(rng.seeds)
    noise = rng.randn([batch, net.img_channels, net.img_resolution, net.img_resolution], device=rng.device)
    label_dim = int(getattr(net, 'label_dim', 0) or 0)
    if label_dim == 0:
        return noise, None
    per_seed = [int(class_idx)] * batch if isinstance(class_idx, (int, np.integer)) else class_idx
    if per_seed is not None:
        if len(per_seed) != batch:
            raise ValueError(f'{len(per_seed)} class indices for {batch} seeds')
        bad = [c for c in per_seed if not 0 <= int(c) < label_dim]
        if bad:
            raise UserError(f'class index {bad[0]} out of range 0..{label_dim - 1}')
    eye = torch.eye(label_dim, device=rng.device)
    if per_seed is None or mode == 'edm2':
        labels = eye[rng.randint(label_dim, size=[batch], device=rng.device)]
    if per_seed is not None:
        labels = eye[torch.as_tensor([int(c) for c in per_seed], device=rng.device)]
    return noise, labels

#----------------------------------------------------------------------------
# Guidance-interval's per-class seed hashing.

_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P5 = 2870177450012600261
_MASK = (1 << 64) - 1
_MODULUS = (1 << 61) - 1  # CPython's hash modulus for ints on 64-bit builds


def _int_hash(n):
    """CPython's hash of an int: sign * (|n| mod 2**61-1), with -1 mapped to -2."""
    h = abs(n) % _MODULUS
    h = h if n >= 0 else -h
    return -2 if h == -1 else h


def tuple_hash(items):
    """CPython (>= 3.8, 64-bit) hash of a tuple of ints, computed explicitly (xxHash-style lanes)."""
    acc = _P5
    for item in items:
        lane = _int_hash(int(item)) & _MASK
        acc = (acc + lane * _P2) & _MASK
        acc = ((acc << 31) | (acc >> 33)) & _MASK
        acc = (acc * _P1) & _MASK
    acc = (acc + (len(items) ^ (_P5 ^ 3527539))) & _MASK
    if acc == _MASK:
        return 1546275796
    return acc - (1 << 64) if acc >= (1 << 63) else acc


def gi_hashed_seed(class_idx, seed):
    """Generator seed upstream GI uses for `seed` of a fixed class: hash((class_idx, seed)) % 2**31."""
    return tuple_hash((int(class_idx), int(seed))) % (1 << 31)


def gi_seeds(seeds, class_idx):
    """Seeds as upstream GI's denoise_latents uses them: hashed when `class_idx` is truthy.

    Upstream tests `if class_label:`, so class 0 is neither hashed nor fixed (labels are drawn at
    random); callers that want that quirk pass class_idx=None to `draw_noise_and_labels` too.
    """
    return [gi_hashed_seed(class_idx, s) for s in seeds] if class_idx else [int(s) for s in seeds]

#----------------------------------------------------------------------------
# Seed lists and batching.

class SeedList(collections.abc.Sequence):
    """An immutable list of seeds stored as inclusive runs, never expanded: '0-999999999' costs
    two numbers. Supports len, indexing, slicing (a SeedList again), iteration and comparison
    with other sequences."""

    def __init__(self, runs=()):
        self._runs = []  # (first seed, length) per run
        for run in runs:
            if isinstance(run, range) and run.step == 1:
                if len(run):
                    self._runs.append((run.start, len(run)))
            else:
                self._runs.extend((int(s), 1) for s in run)
        self._ends = list(itertools.accumulate(length for _, length in self._runs))

    def __len__(self):
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SeedList(range(first + k, first + k + length) for first, k, length in self._slice_runs(index))
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f'seed list indices must be integers or slices, not {type(index).__name__}')
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError('seed list index out of range')
        run = bisect.bisect_right(self._ends, index)
        first, length = self._runs[run]
        return first + index - (self._ends[run] - length)

    def _slice_runs(self, index):
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError('seed lists support only contiguous slices')
        for (first, length), end in zip(self._runs, self._ends):
            begin = end - length
            lo, hi = max(start, begin), min(stop, end)
            if lo < hi:
                yield first, lo - begin, hi - lo

    def __iter__(self):
        for first, length in self._runs:
            yield from range(first, first + length)

    def __eq__(self, other):
        if not isinstance(other, collections.abc.Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self):
        return 'SeedList(' + ','.join(str(f) if n == 1 else f'{f}-{f + n - 1}' for f, n in self._runs) + ')'


def as_seed_sequence(seeds):
    """`seeds` as an indexable sequence of ints without expanding ranges (range, SeedList stay lazy)."""
    if isinstance(seeds, SeedList):
        return seeds
    if isinstance(seeds, range) and seeds.step == 1:
        return SeedList([seeds])
    return [int(s) for s in seeds]


def parse_seed_list(text):
    """'0-7,12' -> the seeds 0, 1, ..., 7, 12 (a lazy SeedList); ranges are inclusive. Lists and
    ranges pass through."""
    if not isinstance(text, str):
        return as_seed_sequence(text)
    runs = []
    for part in text.split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)\s*-\s*(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise UserError(f'seed range {part!r} in {text!r} is empty (start > end)')
            runs.append(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            runs.append(range(int(part), int(part) + 1))
        else:
            raise UserError(f'seed list {text!r} is not of the form "0-7,12" (bad item {part!r})')
    return SeedList(runs)


class _EvenSplit(collections.abc.Sequence):
    """Chunks k0, k0+step, ... of numpy.array_split(arange(n), parts), computed arithmetically
    (each chunk a range), so that no index array of n entries is ever built."""

    def __init__(self, num, parts, first, step):
        self.num, self.parts, self.first, self.step = num, parts, first, step

    def __len__(self):
        return max(0, -(-(self.parts - self.first) // self.step))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError('batch index out of range')
        k = self.first + index * self.step
        small, extra = divmod(self.num, self.parts)  # the first `extra` chunks are one longer
        start = k * small + min(k, extra)
        return range(start, start + small + (1 if k < extra else 0))


def rank_batches(num_seeds, max_batch_size=32, world_size=1, rank=0):
    """Index ranges of the batches this rank generates, as upstream EDM2 splits the seeds.

    num_batches = ceil(num_seeds / (B*W)) * W nearly equal chunks (numpy.array_split), rank r
    takes chunks r, r+W, ... Empty chunks are kept: callers skip them but still synchronise.
    The chunks are computed on demand, so a billion seeds cost nothing up front.
    """
    if max_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError('need max_batch_size >= 1, world_size >= 1 and 0 <= rank < world_size')
    num_batches = max((num_seeds - 1) // (max_batch_size * world_size) + 1, 1) * world_size
    return _EvenSplit(num_seeds, num_batches, rank, world_size)

def fixed_chunks(num_seeds, batch_size):
    """Consecutive chunks of `batch_size` seed indices (the last may be shorter), as upstream GI.

    Unlike `rank_batches`, the chunk that holds a seed (its company, position and the batch shape)
    depends only on the seed list and `batch_size`: not on the number of processes, nor on which
    chunks a resumed run still has to do. Network kernels may round differently for different batch
    shapes, so this is what makes reruns, resumed runs and multi-process runs bit-identical.
    """
    if batch_size < 1:
        raise ValueError('need batch_size >= 1')
    return [np.arange(start, min(start + batch_size, num_seeds)) for start in range(0, num_seeds, batch_size)]


def deal_chunks(chunks, world_size=1, rank=0):
    """This rank's share of `chunks` (r, r+W, ...), padded with empty chunks to the same count on every rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError('need world_size >= 1 and 0 <= rank < world_size')
    per_rank = -(-len(chunks) // world_size)
    mine = list(chunks[rank::world_size])
    return mine + [np.arange(0)] * (per_rank - len(mine))

#----------------------------------------------------------------------------

def images_per_step(per_rank_batches, count=len):
    """Images made across all ranks at each batch step, from every rank's batch list (rank 0's
    progress bar counts these, not its own batch times the number of ranks, which overcounts the
    padded last steps). `count(indices)` says how many of a batch's images count (default: all).
    Computed per step on demand, so lazy batch lists of a billion seeds stay lazy."""
    return _StepImages(per_rank_batches, count)


class _StepImages:
    def __init__(self, per_rank_batches, count):
        self.per_rank_batches, self.count = per_rank_batches, count

    def __len__(self):
        return max((len(b) for b in self.per_rank_batches), default=0)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return sum(self.count(b[i]) for b in self.per_rank_batches if i < len(b))
