"""Tests for torch_utils.distributed and torch_utils.training_stats."""

import os
import socket

import pytest
import torch

from torch_utils import distributed as dist
from torch_utils import training_stats

TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')

#----------------------------------------------------------------------------
# Single process.

def test_single_process_works_without_env_vars(monkeypatch, capsys):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    dist.init()
    assert not torch.distributed.is_initialized()
    assert dist.get_rank() == 0 and dist.get_world_size() == 1
    dist.barrier()
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    dist.print0('visible on rank 0')
    assert 'visible on rank 0' in capsys.readouterr().out
    assert dist.should_stop() is False
    dist.update_progress(3, 10)

def test_request_suspend_sets_should_suspend(monkeypatch):
    monkeypatch.setattr(dist, '_suspend_requested', False)
    assert not dist.should_suspend()
    dist.request_suspend()
    assert dist.should_suspend()

def test_checkpoint_io_roundtrip(tmp_path):
    net = torch.nn.Linear(2, 2)
    saved_weight = net.weight.detach().clone()
    state = {'step': 7}
    dist.CheckpointIO(net=net, state=state, nothing=None).save(str(tmp_path / 'training-state-0000100.pt'), verbose=False)
    with torch.no_grad():
        net.weight.zero_()
    state['step'] = 0
    other = torch.nn.Linear(2, 2)
    saved = dict(state=state)
    path = dist.CheckpointIO(net=other, state=saved['state']).load_latest(str(tmp_path), verbose=False)
    assert path.endswith('training-state-0000100.pt')
    assert saved['state'] == {'step': 7} and torch.equal(other.weight, saved_weight)
    assert [p.name for p in tmp_path.iterdir()] == ['training-state-0000100.pt']

def test_training_stats_collector_mean_std_num():
    collector = training_stats.Collector(regex='test_ts/.*', keep_previous=False)
    training_stats.report('test_ts/loss', torch.tensor([1.0, 2.0, 3.0]))
    training_stats.report('test_ts/loss', 4.0)
    assert training_stats.report0('test_ts/lr', 0.5) == 0.5
    training_stats.report('other/ignored', 1.0)
    collector.update()
    assert collector.num('test_ts/loss') == 4
    assert collector['test_ts/loss'] == pytest.approx(2.5)
    assert collector.std('test_ts/loss') == pytest.approx(1.118034, rel=1e-5)
    assert collector.as_dict()['test_ts/lr'].mean == pytest.approx(0.5)
    assert 'other/ignored' not in collector.names()
    collector.update()  # nothing new reported
    assert collector.num('test_ts/loss') == 0
    assert isinstance(training_stats.default_collector, training_stats.Collector)

#----------------------------------------------------------------------------
# Two processes over gloo.

def _worker(rank, world_size, port, result_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    if torch.cuda.is_available():
        # One GPU cannot host two NCCL ranks; pre-create a gloo group, which init() adopts.
        torch.distributed.init_process_group(backend='gloo', init_method='env://')
    dist.init()
    assert dist.get_rank() == rank and dist.get_world_size() == world_size
    t = torch.tensor([rank + 1.0, 10.0])
    dist.all_reduce_sum(t)
    collector = training_stats.Collector(regex='w/.*')
    training_stats.report('w/value', torch.tensor([float(rank)] * (rank + 1)))
    collector.update()
    dist.barrier()
    torch.save({'sum': t, 'num': collector.num('w/value'), 'mean': collector.mean('w/value')},
               os.path.join(result_dir, f'rank{rank}.pt'))
    torch.distributed.destroy_process_group()

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def test_two_process_gloo_all_reduce_sum(tmp_path):
    world_size = 2
    torch.multiprocessing.spawn(_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    for rank in range(world_size):
        res = torch.load(tmp_path / f'rank{rank}.pt')
        assert res['sum'].tolist() == [3.0, 20.0]
        # rank 0 reported one 0.0, rank 1 two 1.0s: 3 values, mean 2/3 on every rank.
        assert res['num'] == 3 and res['mean'] == pytest.approx(2 / 3)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# A rank whose peer is gone reports one line, not a gloo traceback.

PEER_SCRIPT = '''
import datetime, os, time
import torch
from torch_utils import distributed as dist
from edmguide.util.errors import run_cli
torch.distributed.init_process_group('gloo', init_method='env://', timeout=datetime.timedelta(seconds=30))
dist.init()
if dist.get_rank() == 1:
    os._exit(0)  # dies without a word, as a worker killed by the torchrun agent
def work():
    time.sleep(0.5)
    for _ in range(100):
        dist.all_reduce_sum(torch.ones(1))
run_cli(work)
'''

def test_a_lost_peer_is_one_line_per_rank(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / 'peer.py'
    script.write_text(PEER_SCRIPT)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=str(port), OMP_NUM_THREADS='1', PYTHONPATH=root, CUDA_VISIBLE_DEVICES='')
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 1 and procs[1].returncode == 0
    lines = out[0][1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: rank 0: lost contact with the other processes'), out[0][1]
