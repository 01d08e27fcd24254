"""EDM2 network presets as data, and a helper that builds a `Precond` from one.

Only the channel count and dropout differ between network sizes; everything else uses the
`networks_edm2` defaults. The training hyperparameters are kept next to them for reference and for
the demo training code.
"""

from training import networks_edm2

#----------------------------------------------------------------------------
# Presets: name -> dict(channels, dropout, lr, decay, P_mean, P_std, duration).
# img512 nets work on 64x64x4 SD-VAE latents, img64 nets on 64x64x3 pixels. `decay` is the
# learning-rate decay time in batches, `duration` the training length in images. Batch 2048.

_Mi = 2 ** 20

def _preset(channels, dropout, lr, decay, P_mean, P_std, duration_mi, img_channels):
    return dict(channels=channels, dropout=dropout, lr=lr, decay=decay, P_mean=P_mean, P_std=P_std,
        duration=duration_mi * _Mi, batch=2048, img_resolution=64, img_channels=img_channels)

EDM2_NETWORK_PRESETS = {
    'edm2-img512-xxs': _preset(64,  0.00, 0.0170, 70000, -0.4, 1.0, 2048, 4),
    'edm2-img512-xs':  _preset(128, 0.00, 0.0120, 70000, -0.4, 1.0, 2048, 4),
    'edm2-img512-s':   _preset(192, 0.00, 0.0100, 70000, -0.4, 1.0, 2048, 4),
    'edm2-img512-m':   _preset(256, 0.10, 0.0090, 70000, -0.4, 1.0, 2048, 4),
    'edm2-img512-l':   _preset(320, 0.10, 0.0080, 70000, -0.4, 1.0, 1792, 4),
    'edm2-img512-xl':  _preset(384, 0.10, 0.0070, 70000, -0.4, 1.0, 1280, 4),
    'edm2-img512-xxl': _preset(448, 0.10, 0.0065, 70000, -0.4, 1.0, 896,  4),
    'edm2-img64-xs':   _preset(128, 0.00, 0.0120, 35000, -0.8, 1.6, 1024, 3),
    'edm2-img64-s':    _preset(192, 0.00, 0.0100, 35000, -0.8, 1.6, 1024, 3),
    'edm2-img64-m':    _preset(256, 0.10, 0.0090, 35000, -0.8, 1.6, 2048, 3),
    'edm2-img64-l':    _preset(320, 0.10, 0.0080, 35000, -0.8, 1.6, 1024, 3),
    'edm2-img64-xl':   _preset(384, 0.10, 0.0070, 35000, -0.8, 1.6, 640,  3),
}

#----------------------------------------------------------------------------

def get_preset(name):
    """Look up a preset by 'edm2-img512-s' or the short form 'img512-s'."""
    key = name if name.startswith('edm2-') else f'edm2-{name}'
    if key not in EDM2_NETWORK_PRESETS:
        raise KeyError(f'unknown EDM2 network preset {name!r}; known: {", ".join(EDM2_NETWORK_PRESETS)}')
    return EDM2_NETWORK_PRESETS[key]

def edm2_network_kwargs(name, label_dim=1000, **overrides):
    """Constructor kwargs of `Precond` for a preset, in the form recorded by trained pickles."""
    preset = get_preset(name)
    kwargs = dict(model_channels=preset['channels'], dropout=preset['dropout'], use_fp16=True,
        img_resolution=preset['img_resolution'], img_channels=preset['img_channels'], label_dim=label_dim)
    kwargs.update(overrides)
    return kwargs

def build_edm2_network(name, label_dim=1000, **overrides):
    """A freshly initialized `Precond` for a preset (label_dim 0 = unconditional)."""
    return networks_edm2.Precond(**edm2_network_kwargs(name, label_dim=label_dim, **overrides))

#----------------------------------------------------------------------------
