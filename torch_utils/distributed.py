"""Process-group setup and rank helpers that also work as a plain single process.

Under ``torchrun`` (RANK/WORLD_SIZE/MASTER_ADDR... in the environment) ``init``
joins the process group, using NCCL when CUDA is available and gloo
otherwise. Without those variables nothing is initialised and every helper
degrades to its single-process meaning, so library code can call them
unconditionally.
"""

import atexit
import os
import re

import torch

from . import training_stats

#----------------------------------------------------------------------------

_sync_device = None     # device tensors must live on for collectives (None = single process)
_suspend_requested = False
_progress = (0, 0)

def _group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()

def init() -> None:
    """Join the process group described by the environment, if any.

    Also tells ``training_stats`` which rank this is and where to reduce.
    Safe to call when a process group already exists (it is adopted).
    """
    global _sync_device
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if not _group_active() and world_size > 1:
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        torch.distributed.init_process_group(backend='nccl' if use_cuda else 'gloo', init_method='env://')
        atexit.register(_shutdown)
    if _group_active() and torch.distributed.get_world_size() > 1:
        backend = torch.distributed.get_backend()
        _sync_device = torch.device('cuda', torch.cuda.current_device()) if backend == 'nccl' else torch.device('cpu')
    else:
        _sync_device = None
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=_sync_device)

def _shutdown() -> None:
    """Leave the process group at interpreter exit: a group torn down implicitly may abort the
    process ("terminate called without an active exception" from gloo's threads)."""
    try:
        if _group_active():
            torch.distributed.destroy_process_group()
    except Exception: # pylint: disable=broad-except
        pass

def get_rank() -> int:
    """Rank of this process (0 when single process)."""
    return torch.distributed.get_rank() if _group_active() else 0

def get_world_size() -> int:
    """Number of processes (1 when single process)."""
    return torch.distributed.get_world_size() if _group_active() else 1

def barrier() -> None:
    """Wait for all ranks; no-op when single process."""
    if get_world_size() > 1:
        torch.distributed.barrier()

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it; no-op when single process.

    Tensors on another device than the backend needs (e.g. CPU tensors with
    NCCL) are staged through a temporary copy.
    """
    if get_world_size() == 1:
        return tensor
    device = _sync_device
    if device is None:
        device = torch.device('cuda', torch.cuda.current_device()) \
            if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')
    if tensor.device == device:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    else:
        staged = tensor.to(device)
        torch.distributed.all_reduce(staged, op=torch.distributed.ReduceOp.SUM)
        tensor.copy_(staged)
    return tensor

def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable object); ``obj`` itself when single process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    device = _sync_device if _sync_device is not None and _sync_device.type == 'cuda' else None
    torch.distributed.broadcast_object_list(box, src=src, device=device)
    return box[0]

def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)

#----------------------------------------------------------------------------
# Cooperative stop/suspend signals. Upstream wires these to its cluster
# scheduler; here only an explicit request can trigger them.

def should_stop() -> bool:
    """True if the job should end now (never, outside a managed cluster)."""
    return False

def should_suspend() -> bool:
    """True once ``request_suspend`` was called in this process."""
    return _suspend_requested

def request_suspend() -> None:
    """Ask the training loop to checkpoint and exit at the next opportunity."""
    global _suspend_requested
    _suspend_requested = True

def update_progress(cur: int, total: int) -> None:
    """Record progress (for schedulers that display it); no effect otherwise."""
    global _progress
    _progress = (int(cur), int(total))

#----------------------------------------------------------------------------

class CheckpointIO:
    """Save/restore the state of several named objects as one ``.pt`` file.

    Each object contributes ``state_dict()`` if it has one, else its plain
    dict contents or ``__dict__``. Only rank 0 writes; the write is atomic.
    """

    def __init__(self, **kwargs):
        self._state_objs = kwargs

    def save(self, pt_path: str, verbose: bool = True) -> None:
        if verbose:
            print0(f'Saving {pt_path} ... ', end='', flush=True)
        data = {}
        for name, obj in self._state_objs.items():
            if obj is None:
                data[name] = None
            elif isinstance(obj, dict):
                data[name] = obj
            elif hasattr(obj, 'state_dict'):
                data[name] = obj.state_dict()
            elif hasattr(obj, '__dict__'):
                data[name] = obj.__dict__
            else:
                raise ValueError(f'Cannot save object of type {type(obj).__name__} under {name!r}')
        if get_rank() == 0:
            tmp_path = f'{pt_path}.tmp{os.getpid()}'
            try:
                torch.save(data, tmp_path)
                os.replace(tmp_path, pt_path)
            finally:
                if os.path.exists(tmp_path):
                    os.remove(tmp_path)
        if verbose:
            print0('done')

    def load(self, pt_path: str, verbose: bool = True) -> None:
        if verbose:
            print0(f'Loading {pt_path} ... ', end='', flush=True)
        data = torch.load(pt_path, map_location=torch.device('cpu'), weights_only=False)
        for name, obj in self._state_objs.items():
            if obj is None:
                continue
            if isinstance(obj, dict):
                obj.clear()
                obj.update(data[name])
            elif hasattr(obj, 'load_state_dict'):
                obj.load_state_dict(data[name])
            elif hasattr(obj, '__dict__'):
                obj.__dict__.clear()
                obj.__dict__.update(data[name])
            else:
                raise ValueError(f'Cannot load object of type {type(obj).__name__} under {name!r}')
        if verbose:
            print0('done')

    def load_latest(self, run_dir: str, pattern: str = r'training-state-(\d+).pt', verbose: bool = True) -> str | None:
        """Load the file in ``run_dir`` matching ``pattern`` with the largest number; return its path."""
        fnames = [e.name for e in os.scandir(run_dir) if e.is_file() and re.fullmatch(pattern, e.name)]
        if len(fnames) == 0:
            return None
        latest = max(fnames, key=lambda n: float(re.fullmatch(pattern, n).group(1)))
        path = os.path.join(run_dir, latest)
        self.load(path, verbose=verbose)
        return path

#----------------------------------------------------------------------------
