"""A denoiser whose arithmetic depends on the batch shape, like real kernels but a million times more.

Real CPU/GPU kernels may round differently for different batch sizes (a pixel value off by 1,
rarely). This stand-in makes that effect large and certain, so a test can prove that a pipeline
evaluates every seed in the same batch whatever the number of processes or interruptions.
"""

import torch

from torch_utils import persistence


@persistence.persistent_class
class BatchShapeSensitiveDenoiser(torch.nn.Module):
    def __init__(self, img_resolution=8, img_channels=3, label_dim=0):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
        return x.to(torch.float32) / (1 + sigma ** 2) * (1 + 0.05 * x.shape[0]) + 0.3


def save_spy_pickle(path):
    import pickle
    import dnnlib
    from training.encoders import StandardRGBEncoder
    with open(path, 'wb') as f:
        pickle.dump(dnnlib.EasyDict(encoder=StandardRGBEncoder(), ema=BatchShapeSensitiveDenoiser()), f)
    return str(path)
