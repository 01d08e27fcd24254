"""Scalar statistics gathered across ranks (count, mean, std per name).

Code anywhere calls ``report(name, value)``; a ``Collector`` later sums the
accumulated moments over all ranks and exposes num/mean/std. Embedded
upstream training code imports this module, so the names are fixed.
"""

import re

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------

_num_moments = 3                 # count, sum, sum of squares
_reduce_dtype = torch.float32    # dtype of values before summing
_counter_dtype = torch.float64   # dtype of the accumulated moments
_rank = 0                        # set by init_multiprocessing
_sync_device = None              # device used for all_reduce (None = no sync)
_sync_called = False             # init_multiprocessing must come first
_counters = {}                   # name -> {device: moments accumulated since last sync}
_cumulative = {}                 # name -> moments summed over all ranks since the start

#----------------------------------------------------------------------------

def init_multiprocessing(rank: int, sync_device) -> None:
    """Declare this process's rank and the device used to reduce statistics.

    ``sync_device=None`` means single process (no communication). Must be
    called before the first ``Collector.update``.
    """
    global _rank, _sync_device
    sync_device = torch.device(sync_device) if sync_device is not None else None
    assert not _sync_called or (rank, sync_device) == (_rank, _sync_device), \
        'init_multiprocessing() must be called before the first sync'
    _rank = rank
    _sync_device = sync_device

def report(name: str, value):
    """Accumulate every element of ``value`` under ``name``; returns ``value`` unchanged.

    All ranks must report the same names (possibly with empty values) for the
    cross-rank reduction to line up.
    """
    if name not in _counters:
        _counters[name] = {}
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(_reduce_dtype)
    moments = torch.stack([
        torch.ones_like(elems).sum(),
        elems.sum(),
        elems.square().sum(),
    ]).to(_counter_dtype)
    assert moments.ndim == 1 and moments.shape[0] == _num_moments
    counters = _counters[name]
    if moments.device not in counters:
        counters[moments.device] = torch.zeros_like(moments)
    counters[moments.device].add_(moments)
    return value

def report0(name: str, value):
    """Like ``report`` but only rank 0 contributes (others register the name)."""
    report(name, value if _rank == 0 else [])
    return value

def _sync(names) -> list[tuple[str, torch.Tensor]]:
    """Fold pending moments of ``names`` into the cross-rank cumulative totals."""
    global _sync_called
    if len(names) == 0:
        return []
    _sync_called = True
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    deltas = []
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)
    if _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(deltas)
    deltas = deltas.cpu()
    result = []
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
        result.append((name, _cumulative[name]))
    return result

#----------------------------------------------------------------------------

class Collector:
    """View of the reported statistics whose names match ``regex``.

    ``update()`` captures everything reported since the previous update
    (across all ranks; collective, so every rank must call it). With
    ``keep_previous`` a name that received nothing keeps its last values.
    """

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = {}
        self._moments = {}
        self.update()
        self._moments.clear()

    def names(self) -> list[str]:
        """Reported names matching the regex."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self) -> None:
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name: str) -> torch.Tensor:
        assert self._regex.fullmatch(name), f'{name} does not match the collector regex'
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def num(self, name: str) -> int:
        """Number of scalars reported under ``name`` in the last interval."""
        return int(self._get_delta(name)[0])

    def mean(self, name: str) -> float:
        """Mean of the scalars (NaN when none)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name: str) -> float:
        """Population standard deviation of the scalars (NaN when none)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if int(delta[0]) == 1:
            return 0.0
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self) -> dnnlib.EasyDict:
        """{name: EasyDict(num, mean, std)} for every name seen in the last interval."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name: str) -> float:
        return self.mean(name)

#----------------------------------------------------------------------------

default_collector = Collector()

#----------------------------------------------------------------------------
