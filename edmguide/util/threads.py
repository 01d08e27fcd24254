"""CPU threads for torch, decided before torch starts.

The rule (README, "Performance"): torch's intra-op thread count is the number of cores this
process may really use, i.e. the smaller of its CPU affinity (`os.sched_getaffinity`) and its
cgroup CPU quota (rounded down), and of the cores left idle by other work (the machine's cores
minus its 1-minute load average, rounded), divided among the processes torchrun started on this
node; at least 1. A thread that has to share its core with another job holds up every parallel
region, so on a busy machine fewer threads are faster (measured: 2 threads beside 2 busy
processes on 2 cores took twice the time of 1 thread). OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, `KMP_BLOCKTIME=0` for Intel's
runtime) instead of spinning, so that on a machine shared with other jobs waiting threads give
their core back; spinning threads were what made the default ten times slower than one thread.
An explicit `OMP_NUM_THREADS` (or wait policy) set by the user is kept, and a `--threads` option
wins over both.

This module imports nothing heavy: the scripts import it first, and `configure` must run before
torch is imported for the OpenMP settings to take effect (the thread count is also applied to a
torch that is already loaded).
"""

import os
import sys

CGROUP_V2_CPU_MAX = '/sys/fs/cgroup/cpu.max'
CGROUP_V1_QUOTA = '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'
CGROUP_V1_PERIOD = '/sys/fs/cgroup/cpu/cpu.cfs_period_us'


def parse_cgroup_v2(text):
    """CPUs allowed by a cgroup v2 `cpu.max` line ("max 100000" -> None, "150000 100000" -> 1.5)."""
    parts = text.split()
    if not parts or parts[0] == 'max':
        return None
    period = float(parts[1]) if len(parts) > 1 else 100000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def parse_cgroup_v1(quota_text, period_text):
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = no limit)."""
    quota, period = float(quota_text), float(period_text)
    return quota / period if quota > 0 and period > 0 else None


def _read(path):
    with open(path) as f:
        return f.read()


def cgroup_cpu_limit():
    """This process's cgroup CPU quota in CPUs, or None where there is none (or it cannot be read)."""
    try:
        return parse_cgroup_v2(_read(CGROUP_V2_CPU_MAX))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return parse_cgroup_v1(_read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD))
    except (OSError, ValueError):
        return None


def usable_cpus():
    """Cores this process may run on (affinity mask; `os.cpu_count()` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(affinity, quota=None, local_processes=1, load=None, machine_cores=None):
    """The thread count: min(affinity, floor(quota), idle cores) shared by `local_processes`, at least 1.

    Idle cores = `machine_cores` (default: `affinity`) minus `load` (the 1-minute load average of
    other work), rounded; no load given = no reduction."""
    cores = max(int(affinity), 1)
    if quota is not None:
        cores = min(cores, max(int(quota), 1))
    if load is not None:
        idle = (machine_cores or affinity) - float(load)
        cores = min(cores, max(int(idle + 0.5), 1))
    return max(cores // max(int(local_processes), 1), 1)


def machine_load():
    """(1-minute load average, the machine's cores), or (None, None) where unknown."""
    try:
        return os.getloadavg()[0], os.cpu_count()
    except (AttributeError, OSError):
        return None, None


def environment_updates(environ, threads=None, affinity=None, quota=None, load=None, machine_cores=None):
    """The variables to set before torch starts, given the current environment (a mapping).

    Returns (updates dict, chosen thread count). `threads` (a --threads option) wins; else an
    explicit OMP_NUM_THREADS is kept; else `choose_threads` decides. The wait policy is set only
    where the user set none."""
    updates = {}
    if threads is not None:
        count = max(int(threads), 1)
        updates['OMP_NUM_THREADS'] = str(count)
    elif environ.get('OMP_NUM_THREADS', '').strip().isdigit() and int(environ['OMP_NUM_THREADS']) > 0:
        count = int(environ['OMP_NUM_THREADS'])
    else:
        local = environ.get('LOCAL_WORLD_SIZE', '1')
        if load is None and affinity is None:
            load, machine_cores = machine_load()
        count = choose_threads(usable_cpus() if affinity is None else affinity,
                               cgroup_cpu_limit() if quota is None else quota,
                               int(local) if local.isdigit() else 1, load=load, machine_cores=machine_cores)
        updates['OMP_NUM_THREADS'] = str(count)
    if 'OMP_WAIT_POLICY' not in environ:
        updates['OMP_WAIT_POLICY'] = 'PASSIVE'
    if 'KMP_BLOCKTIME' not in environ:
        updates['KMP_BLOCKTIME'] = '0'
    return updates, count


def configure(threads=None):
    """Apply the rule to this process (before torch is imported, where possible); returns the count."""
    updates, count = environment_updates(os.environ, threads)
    os.environ.update(updates)
    torch = sys.modules.get('torch')
    if torch is not None:  # already started: the wait policy is fixed, the thread count is not
        torch.set_num_threads(count)
    return count


def threads_option(func):
    """`--threads N` for a click command (imported lazily: click is light)."""
    import click
    return click.option('--threads', type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
                        callback=lambda _ctx, _param, value: configure(value) if value else None,
                        help='CPU threads for torch  [default: the cores this process may use; OMP_NUM_THREADS if set]')(func)
