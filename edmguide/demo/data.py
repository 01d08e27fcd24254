"""The demo data set: scikit-learn's 8x8 handwritten digits, upscaled to a small grayscale image.

The digits ship inside scikit-learn (1797 images, 10 classes, pixel values 0..16), so the demo
networks can be trained and evaluated with no download. Images are returned as uint8 NCHW with one
channel, the same layout the EDM2 pixel encoders and the metric feature networks consume.
"""

import numpy as np
import torch

#----------------------------------------------------------------------------
# Loading.

NUM_CLASSES = 10


def load_digits_uint8(resolution=16, use_labels=True):
    """Return `(images, labels)`: uint8 tensor [N, 1, R, R] in 0..255 and int64 tensor [N]
    (None without `use_labels`).

    The 8x8 originals (0..16) are rescaled to 0..255 and resized with bilinear interpolation
    (half-pixel centres, no antialiasing when enlarging); the result is rounded and clipped.
    The output is a deterministic function of the scikit-learn data.
    """
    from sklearn.datasets import load_digits  # Imported lazily: only needed to build the data.
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f'resolution must be positive, got {resolution}')
    digits = load_digits()
    x = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) * (255.0 / 16.0))[:, None]
    if resolution != x.shape[-1]:
        antialias = resolution < x.shape[-1]
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode='bilinear',
                                            align_corners=False, antialias=antialias)
    images = x.round().clamp(0, 255).to(torch.uint8).contiguous()
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64)) if use_labels else None
    return images, labels


def one_hot(labels, num_classes=NUM_CLASSES):
    """Float32 one-hot rows [N, num_classes] for int labels [N] (the EDM2 class-label format)."""
    return torch.nn.functional.one_hot(labels.to(torch.int64), num_classes).to(torch.float32)

#----------------------------------------------------------------------------
# Splits and minibatches.

def train_test_split(num_images, test_fraction=0.2, seed=0):
    """Deterministic split of `range(num_images)`: `(train_idx, test_idx)`, both sorted int64 tensors."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_images, generator=gen)
    num_test = int(round(num_images * test_fraction))
    return perm[num_test:].sort().values, perm[:num_test].sort().values


class EpochSampler:
    """Yields index batches of a fixed size, reshuffling (with its own generator) every epoch.

    Batches may straddle an epoch boundary, so every image is seen exactly once per epoch.
    """

    def __init__(self, num_items, batch_size, seed=0):
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed))
        self._order = torch.empty([0], dtype=torch.int64)

    def next(self):
        while self._order.numel() < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(self.num_items, generator=self.gen)])
        batch, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        return batch

#----------------------------------------------------------------------------
