"""edmguide.util.threads: the thread count from affinity and cgroup quota, and who wins."""

from edmguide.util import threads


def test_thread_count_is_the_smaller_of_affinity_and_quota():
    assert threads.choose_threads(2) == 2
    assert threads.choose_threads(64, quota=2.0) == 2      # container with a 2-CPU quota on a big host
    assert threads.choose_threads(64, quota=1.5) == 1      # rounded down
    assert threads.choose_threads(4, quota=0.3) == 1       # at least one
    assert threads.choose_threads(8, quota=16) == 8
    assert threads.choose_threads(8, local_processes=4) == 2  # torchrun processes on one node share the cores
    assert threads.choose_threads(2, local_processes=8) == 1
    # Other work on the machine: only the idle cores count.
    assert threads.choose_threads(2, load=0.2) == 2
    assert threads.choose_threads(2, load=1.0) == 1
    assert threads.choose_threads(2, load=3.5) == 1
    assert threads.choose_threads(8, load=3.0, machine_cores=64) == 8   # a busy big host, 8 cores ours
    assert threads.choose_threads(16, load=10.4, machine_cores=16) == 6


def test_cgroup_files_are_parsed():
    assert threads.parse_cgroup_v2('max 100000\n') is None
    assert threads.parse_cgroup_v2('150000 100000\n') == 1.5
    assert threads.parse_cgroup_v1('-1', '100000') is None
    assert threads.parse_cgroup_v1('200000', '100000') == 2.0


def test_explicit_settings_win_and_the_wait_policy_is_passive_unless_set():
    updates, count = threads.environment_updates({}, affinity=64, quota=2.0)
    assert count == 2 and updates == {'OMP_NUM_THREADS': '2', 'OMP_WAIT_POLICY': 'PASSIVE', 'KMP_BLOCKTIME': '0'}
    updates, count = threads.environment_updates({'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'ACTIVE'}, affinity=64)
    assert count == 1 and 'OMP_NUM_THREADS' not in updates and 'OMP_WAIT_POLICY' not in updates
    updates, count = threads.environment_updates({'OMP_NUM_THREADS': '1'}, threads=3, affinity=64)
    assert count == 3 and updates['OMP_NUM_THREADS'] == '3'  # --threads beats the environment
    updates, count = threads.environment_updates({'LOCAL_WORLD_SIZE': '2'}, affinity=8, quota=None)
    assert count == 4
