"""Feature detectors behind the Fréchet metrics, and the registry that names them.

A detector turns a batch of uint8 RGB images [N, 3, H, W] (any H, W; resizing is the detector's
business, so images reach it at native resolution) into float features [N, D] on the same device.
Metrics are looked up by name ('fid', 'fd_dinov2', or anything added with `register_metric`), so
the demo and the tests can plug in their own feature networks without touching the pipeline.
"""

import warnings

import numpy as np
import PIL.Image
import torch

import dnnlib
from edmguide.demo.features import METRIC as DEMO_METRIC, PR_METRIC as DEMO_PR_METRIC
from edmguide.util.errors import UserError
from edmguide.nets.loading import is_safetensors, load_network, load_pickle

INCEPTION_URL = ('https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/'
                 'files/metrics/inception-2015-12-05.pkl')
VGG16_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl'
DINOV2_REPO = 'facebookresearch/dinov2:main'
DINOV2_MODEL = 'dinov2_vitl14'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#----------------------------------------------------------------------------
# Detectors.

class Detector:
    """Base class: `detector(images_uint8_nchw) -> float features [N, D]` on the images' device.

    D is not declared: the pipeline checks the first batch's features against the reference.
    """

    def __call__(self, images):
        raise NotImplementedError

def _load_pickled_model(url, what):
    """Unpickle a model through the download cache; any failure becomes a one-line UserError."""
    try:
        if is_safetensors(url): # weights only: rebuilt by this project's class, nothing unpickled
            return load_network(url, want_encoder=False)[0]
        return load_pickle(url, note=False)  # the program's own choice of detector, not a file the user gave
    except UserError as exc: # network, missing cache, corrupt file: all mean "no detector"
        raise UserError(f'cannot load the {what}: {exc}') from exc

class PickledFeatureNet(Detector):
    """A pickled (or .safetensors) feature network called as `model(x_uint8, return_features=True)`.

    This is how NVIDIA ships the Inception-v3 used for FID (the model resizes internally); the
    same calling convention lets other pickled feature networks (e.g. the demo's) become metrics.
    """

    def __init__(self, url, name='feature network'):
        self.url = url
        self.model = _load_pickled_model(url, name)

    def __call__(self, images):
        self.model = self.model.to(images.device)
        return self.model(images, return_features=True)

class ScaledFeatures(Detector):
    """Another detector's features times a constant (precision/recall is scale invariant, but its
    float16 distances need squared feature norms below 65504)."""

    def __init__(self, detector, scale):
        self.detector = detector
        self.scale = float(scale)

    def __call__(self, images):
        return self.detector(images) * self.scale

def inception_v3():
    """The Inception-v3 of FID (2048 pool features), from NVIDIA's pickle via the download cache."""
    return PickledFeatureNet(INCEPTION_URL, name='Inception-v3 detector')

def vgg16():
    """The VGG-16 of precision/recall (4096 fc features), from NVIDIA's pickle via the download cache."""
    return PickledFeatureNet(VGG16_URL, name='VGG-16 detector')

def _resize_224(images, resize_mode):
    """Resize uint8 NCHW to 224x224: 'torch' = antialiased bicubic in float32 (EDM2 default, no
    rounding), 'pil' = PIL bicubic per image back to uint8 (guidance-interval's preprocessing)."""
    if resize_mode == 'torch':
        return torch.nn.functional.interpolate(images.to(torch.float32), size=(224, 224),
                                               mode='bicubic', antialias=True)
    if resize_mode == 'pil':
        out = []
        for image in images.permute(0, 2, 3, 1).cpu().numpy():
            pil = PIL.Image.fromarray(image, 'RGB').resize((224, 224), PIL.Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
        return torch.stack(out).to(images.device, torch.float32)
    raise ValueError(f'unknown resize_mode "{resize_mode}"')

class DINOv2Detector(Detector):
    """DINOv2 ViT-L/14 (1024 features) from torch hub, cached under `<dnnlib cache>/torch_hub`.

    Offline use needs the hub repo already unpacked at
    `<cache>/torch_hub/facebookresearch_dinov2_main` (plus its weights in the hub checkpoint cache).
    """

    def __init__(self, resize_mode='torch'):
        if resize_mode not in ('torch', 'pil'):
            raise ValueError(f'unknown resize_mode "{resize_mode}"')
        self.resize_mode = resize_mode
        torch.hub.set_dir(dnnlib.make_cache_dir_path('torch_hub'))
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'xFormers is not available')
            try:
                model = torch.hub.load(DINOV2_REPO, DINOV2_MODEL, trust_repo=True, verbose=False,
                                       skip_validation=True)
            except Exception as exc: # offline without a cached repo, broken hubconf, ...
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f'cannot load the DINOv2 detector ({DINOV2_REPO}, {DINOV2_MODEL}) '
                                f'from torch hub dir "{torch.hub.get_dir()}": {msg}') from exc
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images):
        x = _resize_224(images, self.resize_mode) / 255
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        x = (x - mean) / std
        self.model = self.model.to(images.device)
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'xFormers is not available')
            return self.model(x)

#----------------------------------------------------------------------------
# Registry: metric name -> detector factory.

METRIC_KINDS = ('frechet', 'pr') # see kinds.py: what each kind accumulates and reports
_metrics = {} # name -> dnnlib.EasyDict(factory, label, kind)
_detector_cache = {} # (name, sorted kwargs) -> Detector

def register_metric(name, factory, *, label=None, replace=False, kind='frechet'):
    """Make `name` a metric whose features come from `factory(**kwargs) -> Detector`.

    `kind` is 'frechet' (mean/covariance, a Fréchet distance) or 'pr' (precision and recall of
    the features themselves). `label` is what the guidance-interval CLI prints (default: name
    upper-cased). Registering an existing name needs `replace=True`, so two plugins cannot
    silently shadow each other.
    """
    if not callable(factory):
        raise TypeError('factory must be callable')
    if kind not in METRIC_KINDS:
        raise ValueError(f'unknown metric kind "{kind}" (known: {", ".join(METRIC_KINDS)})')
    if name in _metrics and not replace:
        raise ValueError(f'metric "{name}" is already registered')
    _metrics[name] = dnnlib.EasyDict(factory=factory, label=label or name.upper(), kind=kind)
    for key in [key for key in _detector_cache if key[0] == name]:
        del _detector_cache[key]

def unregister_metric(name):
    """Forget a metric (tests use this to clean up)."""
    _metrics.pop(name, None)
    for key in [key for key in _detector_cache if key[0] == name]:
        del _detector_cache[key]

def metric_names():
    """Registered metric names, in registration order."""
    return list(_metrics)

def metric_label(name):
    """Display label of a metric, e.g. 'FID' or 'FD_DINOv2'."""
    return _metrics[name].label

def metric_kind(name):
    """'frechet' or 'pr'."""
    return _metrics[name].kind

def check_metric_names(names):
    """Validate a list of metric names; the first unknown one is a UserError."""
    for name in names:
        if name not in _metrics:
            raise UserError(f'Invalid metric "{name}" (known: {", ".join(_metrics)})')
    return list(names)

def parse_metric_list(text):
    """'fid,fd_dinov2' -> ['fid', 'fd_dinov2']: `kinds.metric_list` (blanks dropped, duplicates
    collapsed, names checked)."""
    from edmguide.metrics import kinds  # kinds imports this module
    return kinds.metric_list(text)

def get_detector(name, **kwargs):
    """The detector of metric `name`, built once per (name, kwargs) and then reused."""
    check_metric_names([name])
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _detector_cache:
        _detector_cache[key] = _metrics[name].factory(**kwargs)
    return _detector_cache[key]

def clear_detector_cache():
    """Drop all built detectors (e.g. after changing the cache directory)."""
    _detector_cache.clear()

register_metric('fid', inception_v3, label='FID')
register_metric('fd_dinov2', DINOv2Detector, label='FD_DINOv2')
register_metric('pr', vgg16, label='PR', kind='pr')

#----------------------------------------------------------------------------

def demo_digits_features():
    """The embedded demo's digit feature network (trained by this project, shipped in the repo)."""
    from edmguide.nets.presets import DEMO_FILES
    return PickledFeatureNet(DEMO_FILES.features, name='demo digits feature network')

register_metric(DEMO_METRIC, demo_digits_features, label='FD_digits')
def demo_digits_pr_features():
    """The demo's digit features scaled into float16 range for precision/recall."""
    from edmguide.demo.features import PR_FEATURE_SCALE
    return ScaledFeatures(demo_digits_features(), PR_FEATURE_SCALE)

register_metric(DEMO_PR_METRIC, demo_digits_pr_features, label='PR_digits', kind='pr')
