"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) as NVIDIA's `pr50k3` computes it.

Each feature set spans a "manifold": the union of balls around its points, each ball's radius the
distance to the point's k-th nearest neighbour in the same set (the point itself excluded). Precision
is the share of generated images inside the real manifold, recall the share of real images inside the
generated one. The arithmetic follows StyleGAN2-ADA / StyleGAN3's metric so the values match it:

- features are held in float16; distances are `torch.cdist` of float16 rows and columns (the
  matrix-product form |x|^2 + |y|^2 - 2 x.y, which NVIDIA's block sizes always select), in float16;
- a radius is the (k+1)-th smallest float16 distance of a point to its own set (the smallest being
  the point itself, at ~0), taken in float32 and stored as float16;
- a probe is inside if its float16 distance to some manifold point is <= that point's radius;
- distances come in blocks of `row_block` x `col_block` (10,000 x 10,000 by default). Column blocks
  are the equal-size chunks NVIDIA's single-GPU run uses; radii are kept as a running k+1 smallest,
  so memory is one block, never N x N, on GPU and CPU alike.

Under torchrun every rank holds all features and computes the row blocks r, r+W, ...; the per-row
radii and the inside counts are summed across ranks. A row's numbers do not depend on which rank
computes it, so the result is that of a single process.
"""

import numpy as np
import torch

from edmguide.util.errors import UserError
from torch_utils import distributed as dist

NHOOD_SIZE = 3           # k of pr50k3
ROW_BLOCK = 10000        # rows per distance block (NVIDIA's row_batch_size)
COL_BLOCK = 10000        # columns per distance block (NVIDIA's col_batch_size)
MAX_REAL = 200000        # pr50k3: up to 200k real images
NUM_GEN = 50000          # pr50k3: 50k generated images
FLOAT16_MAX = 65504.0    # largest float16: squared feature norms must stay below it

#----------------------------------------------------------------------------
# Distances in blocks.

def pairwise_distances(rows, cols):
    """Euclidean distances [R, C] of float16 feature rows to columns, in float16 (cdist's mm form)."""
    return torch.cdist(rows.unsqueeze(0), cols.unsqueeze(0),
                       compute_mode='use_mm_for_euclid_dist')[0]

def column_blocks(features, col_block=COL_BLOCK):
    """`features` split into ceil(N / col_block) chunks of equal size (the last one shorter)."""
    num_blocks = max(-(-features.shape[0] // col_block), 1)
    return features.split(-(-features.shape[0] // num_blocks))

def _my_row_blocks(features, row_block):
    """(start, block) for this rank's row blocks: blocks r, r+W, ... of consecutive `row_block` rows."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    starts = range(0, features.shape[0], row_block)
    return [(start, features[start:start + row_block]) for i, start in enumerate(starts) if i % world_size == rank]

def manifold_radii(manifold, k=NHOOD_SIZE, row_block=ROW_BLOCK, col_block=COL_BLOCK):
    """Distance of every manifold point to its k-th nearest neighbour in the set (itself excluded),
    float16 [N], computed blockwise and combined over ranks."""
    num = manifold.shape[0]
    if num <= k:
        raise UserError(f'precision/recall needs more than k = {k} images per set, got {num}')
    radii = torch.zeros(num, dtype=torch.float32, device=manifold.device)
    cols = column_blocks(manifold, col_block)
    for start, rows in _my_row_blocks(manifold, row_block):
        best = None # running k+1 smallest distances of each row (float32, exact copies of float16 values)
        for block in cols:
            dist_block = pairwise_distances(rows, block).to(torch.float32)
            candidates = dist_block if best is None else torch.cat([best, dist_block], dim=1)
            best = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii[start:start + rows.shape[0]] = best[:, k]
    dist.all_reduce_sum(radii) # each row is nonzero on one rank only: the sum is exact
    return radii.to(torch.float16)

def count_inside(probes, manifold, radii, row_block=ROW_BLOCK, col_block=COL_BLOCK):
    """How many probes lie within the radius of at least one manifold point (summed over ranks)."""
    cols = list(zip(column_blocks(manifold, col_block), column_blocks(radii, col_block)))
    count = torch.zeros([], dtype=torch.float64, device=probes.device)
    for _start, rows in _my_row_blocks(probes, row_block):
        inside = torch.zeros(rows.shape[0], dtype=torch.bool, device=probes.device)
        for block, block_radii in cols:
            inside |= (pairwise_distances(rows, block) <= block_radii.unsqueeze(0)).any(dim=1)
        count += inside.sum()
    return int(dist.all_reduce_sum(count).item())

def check_float16_range(features, what='the'):
    """The float16 distance form needs |f|^2 (and so every f_i^2) below the float16 maximum;
    beyond it distances become inf/nan and the shares meaningless, so that is a UserError."""
    if features.shape[0] == 0:
        return
    nan = int(torch.isnan(features).sum())
    if nan:
        every = ' (every value)' if nan == features.numel() else ''
        raise UserError(f'precision/recall: {what} features hold {nan} NaN value{"s" if nan != 1 else ""}{every}')
    squared = features.to(torch.float32).square().sum(dim=1).max().item()
    if not squared < FLOAT16_MAX:
        raise UserError(f'precision/recall: {what} features have squared norms up to {squared:.6g}, beyond the '
                        f'float16 range ({FLOAT16_MAX:g}) in which distances are computed; scale the detector\'s features')

def precision_recall(real, gen, k=NHOOD_SIZE, row_block=ROW_BLOCK, col_block=COL_BLOCK, device=None):
    """{'precision': share of `gen` inside the real manifold, 'recall': share of `real` inside the
    generated manifold} for feature arrays/tensors [N, D] (converted to float16 on `device`)."""
    device = torch.device(device) if device is not None else (real.device if torch.is_tensor(real) else 'cpu')
    real = torch.as_tensor(real).to(device, torch.float16)
    gen = torch.as_tensor(gen).to(device, torch.float16)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise UserError(f'precision/recall: feature shapes {list(real.shape)} and {list(gen.shape)} do not match')
    if row_block < 1 or col_block < 1:
        raise ValueError('row_block and col_block must be >= 1')
    for what, features in (('reference', real), ('generated', gen)):
        check_float16_range(features, what)
    results = {}
    with torch.no_grad():
        for name, manifold, probes in (('precision', real, gen), ('recall', gen, real)):
            radii = manifold_radii(manifold, k, row_block, col_block)
            results[name] = count_inside(probes, manifold, radii, row_block, col_block) / probes.shape[0]
    return results

#----------------------------------------------------------------------------
# Accumulator: the features themselves (the metric needs every pair, not summary statistics).

class PRFeatures:
    """Collects float16 features batch by batch, in the order they are given.

    Under torchrun the pipeline gives every rank the rows of all ranks in seed order
    (`pipeline.gather_step`), so every rank holds the features a single process would have.
    """

    def __init__(self):
        self.batches = [] # float16 tensors [n, D], in update order

    @property
    def num(self):
        return sum(batch.shape[0] for batch in self.batches)

    @property
    def num_batches(self):
        return len(self.batches)

    @property
    def dim(self):
        return self.batches[0].shape[1] if self.batches else None

    def update(self, features):
        """Add a batch of features [N, D] (any float dtype, any device; stored as float16)."""
        f = features.detach().reshape(features.shape[0], -1).to(torch.float16)
        if self.batches and f.shape[1] != self.dim:
            raise ValueError(f'feature dimension changed from {self.dim} to {f.shape[1]}')
        self.batches.append(f)

    def features(self):
        """All features as one float16 tensor [N, D]."""
        return torch.cat(self.batches) if self.batches else torch.zeros([0, 0], dtype=torch.float16)

    def state_dict(self, first_batch=0):
        """{'features': float16 numpy [N, D], 'sizes': int64 numpy of batch sizes} (for checkpoints)
        of the batches from `first_batch` on: a checkpoint can append only what is new."""
        batches = self.batches[first_batch:]
        features = torch.cat(batches) if batches else torch.zeros([0, 0], dtype=torch.float16)
        return {'features': features.cpu().numpy(),
                'sizes': np.array([b.shape[0] for b in batches], dtype=np.int64)}

    def load_state_dict(self, state, device=None):
        """Continue from `state_dict()`'s features, put on `device` (where the next batches will come
        from: features of one accumulator must share a device to be concatenated)."""
        features = torch.from_numpy(np.asarray(state['features'], dtype=np.float16)).to(device or 'cpu')
        sizes = [int(s) for s in np.asarray(state['sizes'])]
        self.batches = list(features.split(sizes)) if sizes else []

    def reference_entry(self):
        """What a reference file stores for this metric: {'features': float16 numpy [N, D]}."""
        features = self.features()
        check_float16_range(features, 'reference')
        return {'features': features.cpu().numpy().astype(np.float16)}

def pr_results(acc, ref_entry, *, device=None, k=NHOOD_SIZE, row_block=ROW_BLOCK, col_block=COL_BLOCK):
    """{'precision': p, 'recall': r} of an accumulator's (generated) features against a reference entry."""
    gen = acc.features()
    device = device if device is not None else gen.device
    return precision_recall(np.asarray(ref_entry['features']), gen, k=k, row_block=row_block,
                            col_block=col_block, device=device)

#----------------------------------------------------------------------------
