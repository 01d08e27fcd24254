"""Fractal trees of anisotropic Gaussians: the two-class 2D data set of the autoguidance toy.

Each class is a binary tree of straight branches. A branch is drawn as `per_branch` elongated
Gaussians laid end to end along its axis; at its tip it splits into two thinner, shorter child
branches turned left and right by a jittered angle. With the paper's settings (8 Gaussians per
branch, 6 subdivisions) a tree has 8 * (2**7 - 1) = 1016 components. Component weights are
proportional to the area of their ellipse, so thick trunks and the many thin twigs carry similar
total mass per level. The two trees grow from a common root in different directions and cross each
other's branches, so the classes overlap in places. Finally both trees are shifted and scaled
together so that the whole two-class mixture has mean 0 and per-coordinate standard deviation
`sigma_data` (0.5).

Everything is deterministic given the seeds (numpy's PCG64 generator).
"""

import dataclasses

import numpy as np

#----------------------------------------------------------------------------
# Data container.

@dataclasses.dataclass(frozen=True)
class Mixture2D:
    """A labelled 2D Gaussian mixture: `means` [K, 2], `covs` [K, 2, 2], `weights` [K] (summing
    to 1 within each class) and `classes` [K] (int class index of each component)."""
    means: np.ndarray
    covs: np.ndarray
    weights: np.ndarray
    classes: np.ndarray

    @property
    def num_classes(self):
        return int(self.classes.max()) + 1

    def select(self, class_idx):
        """The components of one class, as a one-class mixture (class index 0)."""
        keep = self.classes == class_idx
        return Mixture2D(self.means[keep], self.covs[keep], self.weights[keep], np.zeros(keep.sum(), dtype=np.int64))

    def sample(self, n, rng, class_idx=None):
        """`n` exact samples (float64 [n, 2]) of one class, or of the class-balanced mixture."""
        p = self.weights / self.num_classes if class_idx is None else self.weights * (self.classes == class_idx)
        idx = rng.choice(len(p), size=n, p=p / p.sum())
        chol = np.linalg.cholesky(self.covs[idx])
        return self.means[idx] + np.einsum('nij,nj->ni', chol, rng.standard_normal((n, 2)))

#----------------------------------------------------------------------------
# Tree construction.

def _branch_components(start, angle, length, width, per_branch):
    """`per_branch` Gaussians tiling the segment from `start` in direction `angle`."""
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = (np.arange(per_branch) + 0.5) / per_branch
    means = start + t[:, None] * length * direction
    along = 0.6 * length / per_branch        # std along the axis: neighbours blend into a stroke
    rot = np.stack([direction, normal], axis=1)
    cov = rot @ np.diag([along ** 2, width ** 2]) @ rot.T
    covs = np.repeat(cov[None], per_branch, axis=0)
    weights = np.full(per_branch, along * width)
    return means, covs, weights


def make_tree(rng, *, root=(0.0, 0.0), angle=np.pi / 2, length=1.0, width=0.045, depth=6, per_branch=8,
              spread=0.45, length_decay=0.68, width_decay=0.62, jitter=0.25):
    """One fractal tree (unnormalised): arrays means [K,2], covs [K,2,2], weights [K] (sum 1)."""
    parts = []
    stack = [(np.asarray(root, dtype=np.float64), angle, length, width, 0)]
    while stack:
        start, ang, ln, wd, level = stack.pop()
        parts.append(_branch_components(start, ang, ln, wd, per_branch))
        if level < depth:
            tip = start + ln * np.array([np.cos(ang), np.sin(ang)])
            for side in (-1.0, 1.0):
                turn = side * spread * (1 + jitter * rng.uniform(-1, 1))
                scale = 1 + jitter * rng.uniform(-1, 1)
                stack.append((tip, ang + turn, ln * length_decay * scale, wd * width_decay, level + 1))
    means, covs, weights = (np.concatenate(a) for a in zip(*parts))
    return means, covs, weights / weights.sum()


def make_two_class_trees(seed=0, *, depth=6, per_branch=8, sigma_data=0.5):
    """The two-class data set of the autoguidance toy, normalised to mean 0 / std `sigma_data`.

    Class 0 ("A") leans left, class 1 ("B") leans right; both grow from the same root."""
    rng = np.random.default_rng(seed)
    trees = [make_tree(rng, angle=np.pi / 2 + 0.3, depth=depth, per_branch=per_branch),
             make_tree(rng, angle=np.pi / 2 - 0.3, depth=depth, per_branch=per_branch)]
    means = np.concatenate([t[0] for t in trees])
    covs = np.concatenate([t[1] for t in trees])
    weights = np.concatenate([t[2] for t in trees])
    classes = np.concatenate([np.full(len(t[0]), c, dtype=np.int64) for c, t in enumerate(trees)])

    # Normalise the class-balanced mixture: mean 0, average per-coordinate variance sigma_data**2.
    p = weights / len(trees)
    mean = p @ means
    centred = means - mean
    total_var = (p * (np.einsum('kii->k', covs) + (centred ** 2).sum(1))).sum() / 2
    scale = sigma_data / np.sqrt(total_var)
    return Mixture2D(centred * scale, covs * scale ** 2, weights, classes)

#----------------------------------------------------------------------------
