"""Named generation settings: upstream EDM2's presets, the two papers' settings, and the demo.

A preset is data: which pickles, which guiding net, which weight, and (for guidance-interval
settings) which steps are guided. Command-line options override its fields.
"""

import os

import dnnlib

EDM2_URL = 'https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/'
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'demo', 'assets')  # edmguide/demo/assets


def _edm2(net, gnet=None, guidance=None, interval=None, metric=None):
    return dnnlib.EasyDict(net=EDM2_URL + net + '.pkl', gnet=(EDM2_URL + gnet + '.pkl') if gnet else None,
                           guidance=guidance, guidance_interval=interval, metric=metric)


# Upstream EDM2 generate_images.py presets (net, gnet, guidance, recorded metric).
PRESETS = {
    'edm2-img512-xs-fid':   _edm2('edm2-img512-xs-2147483-0.135', metric='fid 3.53'),
    'edm2-img512-xs-dino':  _edm2('edm2-img512-xs-2147483-0.200', metric='fd_dinov2 103.39'),
    'edm2-img512-s-fid':    _edm2('edm2-img512-s-2147483-0.130', metric='fid 2.56'),
    'edm2-img512-s-dino':   _edm2('edm2-img512-s-2147483-0.190', metric='fd_dinov2 68.64'),
    'edm2-img512-m-fid':    _edm2('edm2-img512-m-2147483-0.100', metric='fid 2.25'),
    'edm2-img512-m-dino':   _edm2('edm2-img512-m-2147483-0.155', metric='fd_dinov2 58.44'),
    'edm2-img512-l-fid':    _edm2('edm2-img512-l-1879048-0.085', metric='fid 2.06'),
    'edm2-img512-l-dino':   _edm2('edm2-img512-l-1879048-0.155', metric='fd_dinov2 52.25'),
    'edm2-img512-xl-fid':   _edm2('edm2-img512-xl-1342177-0.085', metric='fid 1.96'),
    'edm2-img512-xl-dino':  _edm2('edm2-img512-xl-1342177-0.155', metric='fd_dinov2 45.96'),
    'edm2-img512-xxl-fid':  _edm2('edm2-img512-xxl-0939524-0.070', metric='fid 1.91'),
    'edm2-img512-xxl-dino': _edm2('edm2-img512-xxl-0939524-0.150', metric='fd_dinov2 42.84'),
    'edm2-img64-s-fid':     _edm2('edm2-img64-s-1073741-0.075', metric='fid 1.58'),
    'edm2-img64-m-fid':     _edm2('edm2-img64-m-2147483-0.060', metric='fid 1.43'),
    'edm2-img64-l-fid':     _edm2('edm2-img64-l-1073741-0.040', metric='fid 1.33'),
    'edm2-img64-xl-fid':    _edm2('edm2-img64-xl-0671088-0.040', metric='fid 1.33'),
    'edm2-img512-xs-guid-fid':   _edm2('edm2-img512-xs-2147483-0.045', 'edm2-img512-xs-uncond-2147483-0.045', 1.40, metric='fid 2.91'),
    'edm2-img512-xs-guid-dino':  _edm2('edm2-img512-xs-2147483-0.150', 'edm2-img512-xs-uncond-2147483-0.150', 1.70, metric='fd_dinov2 79.94'),
    'edm2-img512-s-guid-fid':    _edm2('edm2-img512-s-2147483-0.025', 'edm2-img512-xs-uncond-2147483-0.025', 1.40, metric='fid 2.23'),
    'edm2-img512-s-guid-dino':   _edm2('edm2-img512-s-2147483-0.085', 'edm2-img512-xs-uncond-2147483-0.085', 1.90, metric='fd_dinov2 52.32'),
    'edm2-img512-m-guid-fid':    _edm2('edm2-img512-m-2147483-0.030', 'edm2-img512-xs-uncond-2147483-0.030', 1.20, metric='fid 2.01'),
    'edm2-img512-m-guid-dino':   _edm2('edm2-img512-m-2147483-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 2.00, metric='fd_dinov2 41.98'),
    'edm2-img512-l-guid-fid':    _edm2('edm2-img512-l-1879048-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.20, metric='fid 1.88'),
    'edm2-img512-l-guid-dino':   _edm2('edm2-img512-l-1879048-0.035', 'edm2-img512-xs-uncond-2147483-0.035', 1.70, metric='fd_dinov2 38.20'),
    'edm2-img512-xl-guid-fid':   _edm2('edm2-img512-xl-1342177-0.020', 'edm2-img512-xs-uncond-2147483-0.020', 1.20, metric='fid 1.85'),
    'edm2-img512-xl-guid-dino':  _edm2('edm2-img512-xl-1342177-0.030', 'edm2-img512-xs-uncond-2147483-0.030', 1.70, metric='fd_dinov2 35.67'),
    'edm2-img512-xxl-guid-fid':  _edm2('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.20, metric='fid 1.81'),
    'edm2-img512-xxl-guid-dino': _edm2('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.70, metric='fd_dinov2 33.09'),
    'edm2-img512-s-autog-fid':   _edm2('edm2-img512-s-2147483-0.070', 'edm2-img512-xs-0134217-0.125', 2.10, metric='fid 1.34'),
    'edm2-img512-s-autog-dino':  _edm2('edm2-img512-s-2147483-0.120', 'edm2-img512-xs-0134217-0.165', 2.45, metric='fd_dinov2 36.67'),
    'edm2-img512-xxl-autog-fid':  _edm2('edm2-img512-xxl-0939524-0.075', 'edm2-img512-m-0268435-0.155', 2.05, metric='fid 1.25'),
    'edm2-img512-xxl-autog-dino': _edm2('edm2-img512-xxl-0939524-0.130', 'edm2-img512-m-0268435-0.205', 2.30, metric='fd_dinov2 24.18'),
    'edm2-img512-s-uncond-autog-fid':  _edm2('edm2-img512-s-uncond-2147483-0.070', 'edm2-img512-xs-uncond-0134217-0.110', 2.85, metric='fid 3.86'),
    'edm2-img512-s-uncond-autog-dino': _edm2('edm2-img512-s-uncond-2147483-0.090', 'edm2-img512-xs-uncond-0134217-0.125', 2.90, metric='fd_dinov2 90.39'),
    'edm2-img64-s-autog-fid':  _edm2('edm2-img64-s-1073741-0.045', 'edm2-img64-xs-0134217-0.110', 1.70, metric='fid 1.01'),
    'edm2-img64-s-autog-dino': _edm2('edm2-img64-s-1073741-0.105', 'edm2-img64-xs-0134217-0.175', 2.20, metric='fd_dinov2 31.85'),

    # Guidance-interval paper, Table 1 (guiding net: XS unconditional at the main net's EMA length).
    'gi-img512-s-fid':    _edm2('edm2-img512-s-2147483-0.025', 'edm2-img512-xs-uncond-2147483-0.025', 2.1, [15, 21], metric='fid 1.68'),
    'gi-img512-s-dino':   _edm2('edm2-img512-s-2147483-0.085', 'edm2-img512-xs-uncond-2147483-0.085', 3.2, [13, 19], metric='fd_dinov2 46.25'),
    'gi-img512-xxl-fid':  _edm2('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 2.0, [17, 22], metric='fid 1.40'),
    'gi-img512-xxl-dino': _edm2('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 2.9, [13, 19], metric='fd_dinov2 29.16'),
}

# The embedded demo (handwritten digits, trained by this project; see README "Demo results").
# The networks load from .safetensors conversions of the shipped pickles (no code runs; see
# edmguide/demo/assets/TRAINING.md); the pickles stay for upstream-compatibility tests.
# The interval is the paper's EDM2-S FID interval; the grid uses one weight, 3, for every guided row
# so that what guidance does is visible at a glance (speckled backgrounds with CFG, changed strokes
# with autoguidance); the FD-optimal weights from docs/demo-sweep.md are 1.1 to 1.25.
DEMO_WEIGHT = 3.0
DEMO_INTERVAL = (15, 21)
DEMO_FILES = dnnlib.EasyDict(
    cond=os.path.join(DEMO_DIR, 'digits-cond.safetensors'),
    uncond=os.path.join(DEMO_DIR, 'digits-uncond.safetensors'),
    bad=os.path.join(DEMO_DIR, 'digits-bad.safetensors'),
    features=os.path.join(DEMO_DIR, 'digits-features.safetensors'),
    ref=os.path.join(DEMO_DIR, 'digits-ref.npz'),
)
PRESETS['demo'] = dnnlib.EasyDict(net=DEMO_FILES.cond, gnet=DEMO_FILES.uncond, guidance=DEMO_WEIGHT,
                                  guidance_interval=list(DEMO_INTERVAL), metric=None)


def get_preset(name):
    """The preset's settings (a copy), or None for an unknown name."""
    preset = PRESETS.get(name)
    return None if preset is None else dnnlib.EasyDict(preset)

# Columns of the demo grid: these digit classes, the same seeds for each class.
# Five classes (15 columns) keep the demo quick; 3, 8 and 9 show the differences most clearly.
DEMO_CLASSES = (2, 3, 5, 8, 9)
DEMO_SEEDS = (0, 1, 2)

# Rows of the demo comparison grid: (label, guiding net: none/uncond/bad, weight, step interval).
DEMO_METHODS = (
    ('no guidance', 'none', 1.0, None),
    ('CFG', 'uncond', DEMO_WEIGHT, None),
    ('guidance interval', 'uncond', DEMO_WEIGHT, DEMO_INTERVAL),
    ('autoguidance', 'bad', DEMO_WEIGHT, None),
    ('autoguidance + interval', 'bad', DEMO_WEIGHT, DEMO_INTERVAL),
)


def demo_label(name, guide, weight, interval):
    """A row caption of the demo grid, e.g. 'guidance interval (w = 2, steps 15-21 of 32)'."""
    if guide == 'none':
        return name
    steps = f'steps {interval[0]}-{interval[1]} of 32' if interval else 'all steps'
    return f'{name} (w = {weight:g}, {steps})'
