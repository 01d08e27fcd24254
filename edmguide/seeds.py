"""Per-seed random numbers, seed lists and the batching of seeds over processes.

Every image gets its own generator, so its noise, class label and churn noise depend only on
its seed -- never on the batch size, its position in the batch or the number of processes.
"""

import re

import numpy as np
import torch

from edmguide.errors import UserError

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

def parse_seed_list(text):
    """'0-7,12' -> [0, 1, ..., 7, 12]; ranges are inclusive. Lists/ranges pass through."""
    if not isinstance(text, str):
        return [int(s) for s in text]
    out = []
    for part in text.split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)\s*-\s*(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise UserError(f'seed range {part!r} in {text!r} is empty (start > end)')
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            out.append(int(part))
        else:
            raise UserError(f'seed list {text!r} is not of the form "0-7,12" (bad item {part!r})')
    return out


def rank_batches(num_seeds, max_batch_size=32, world_size=1, rank=0):
    """Index arrays of the batches this rank generates, as upstream EDM2 splits the seeds.

    num_batches = ceil(num_seeds / (B*W)) * W nearly equal chunks (numpy.array_split), rank r
    takes chunks r, r+W, ... Empty chunks are kept: callers skip them but still synchronise.
    """
    if max_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError('need max_batch_size >= 1, world_size >= 1 and 0 <= rank < world_size')
    num_batches = max((num_seeds - 1) // (max_batch_size * world_size) + 1, 1) * world_size
    chunks = np.array_split(np.arange(num_seeds), num_batches)
    return chunks[rank::world_size]

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
    padded last steps). `count(indices)` says how many of a batch's images count (default: all)."""
    steps = max((len(b) for b in per_rank_batches), default=0)
    return [sum(count(b[i]) for b in per_rank_batches if i < len(b)) for i in range(steps)]
