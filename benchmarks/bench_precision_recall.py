#!/usr/bin/env python3
"""Benchmark of precision/recall's distance blocks, and the pr50k3 cost they add up to.

    python benchmarks/bench_precision_recall.py [--device=cuda] [--block=10000] [--dim=4096] [--outdir=DIR]

Times one distance block (`block` x `block` float16 rows/columns of `dim` features: the float16
cdist plus the k+1-smallest update of the radii pass) and one full `precision_recall` of two
`2 * block`-point sets (so the column blocking and the running minimum are included), then scales
the block time to pr50k3: 200,000 real and 50,000 generated images are 20 x 20 + 5 x 20 + 5 x 5 +
20 x 5 = 625 blocks of 10,000 x 10,000. A block's time grows as block^2 * dim, so a smaller
`--block` on a CPU still estimates it. Writes `bench_precision_recall.md` and `.json` to `--outdir`
(default: a new temporary folder) and prints the table.
"""

import json
import os
import platform
import sys
import tempfile
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide.metrics import precision_recall as pr  # noqa: E402

PR50K3_BLOCKS = (pr.MAX_REAL // pr.ROW_BLOCK) ** 2 + 2 * (pr.MAX_REAL // pr.ROW_BLOCK) * (pr.NUM_GEN // pr.ROW_BLOCK) \
    + (pr.NUM_GEN // pr.ROW_BLOCK) ** 2 # 400 + 200 + 25 = 625


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats):
    """Fastest of `repeats` timed calls (after one warm-up call)."""
    fn()
    _sync(device)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


SECTION = 'precision_recall'
TITLE = '9. precision/recall distance blocks and the pr50k3 estimate'
ORDER = 90


def measure(device, block=None, dim=4096, repeats=3):
    """Time one distance block and one full precision_recall of 2 x `block` points; scale to pr50k3."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    block = block or (10000 if device.type == 'cuda' else 2000)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = torch.rand([block, dim], generator=gen, device=device).to(torch.float16) # |f|^2 ~ dim/3: float16 range
    cols = torch.rand([block, dim], generator=gen, device=device).to(torch.float16)

    def one_block():
        d = pr.pairwise_distances(rows, cols).to(torch.float32)
        return d.topk(pr.NHOOD_SIZE + 1, dim=1, largest=False).values

    with torch.no_grad():
        block_s = time_call(one_block, device, repeats)
        sets = [torch.rand([2 * block, dim], generator=gen, device=device) for _ in range(2)]
        full_s = time_call(lambda: pr.precision_recall(sets[0], sets[1], row_block=block, col_block=block, device=device),
                           device, 1)
    scale = (pr.ROW_BLOCK / block) ** 2 * (4096 / dim)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or "cpu"}, {threads} threads'
    return dict(device=str(device), where=where, torch=torch.__version__, block=block, dim=dim,
                block_seconds=block_s, full_pr_seconds_4_blocks_each=full_s, pr50k3_blocks=PR50K3_BLOCKS,
                pr50k3_estimate_seconds=block_s * scale * PR50K3_BLOCKS,
                block_memory_mb=block * block * (2 + 4) / 2**20)


def run(ctx):
    """The runner's entry: small blocks in quick mode."""
    return measure(ctx.device, block=64 if ctx.quick else None, dim=256 if ctx.quick else 4096,
                   repeats=1 if ctx.quick else 3)


def markdown(result):
    block = result['block']
    return '\n'.join([
        '| device | block | dim | one block (s) | precision_recall of 2 x %d points (s) | pr50k3 estimate (625 blocks of 10k x 10k x 4096) |' % (2 * block),
        '|---|---|---|---|---|---|',
        f'| {result["where"]} | {block} | {result["dim"]} | {result["block_seconds"]:.3f} | '
        f'{result["full_pr_seconds_4_blocks_each"]:.2f} | {result["pr50k3_estimate_seconds"] / 60:.1f} min |'])


@click.command()
@click.option('--device', default=None, help='Torch device  [default: cuda if present, else cpu]')
@click.option('--block', type=click.IntRange(min=16), default=None, help='Block size  [default: 10000 on GPU, 2000 on CPU]')
@click.option('--dim', type=click.IntRange(min=1), default=4096, show_default=True, help='Feature dimension (VGG-16: 4096)')
@click.option('--repeats', type=click.IntRange(min=1), default=3, show_default=True, help='Timed repeats (fastest kept)')
@click.option('--outdir', default=None, help='Folder for the results table  [default: a new temp folder]')
def main(device, block, dim, repeats, outdir):
    """Time precision/recall's distance blocks and estimate pr50k3."""
    result = measure(device, block, dim, repeats)
    table = markdown(result)
    outdir = outdir or tempfile.mkdtemp(prefix='bench-pr-')
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, 'bench_precision_recall.json'), 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(outdir, 'bench_precision_recall.md'), 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    print(table)
    print(f'(written to {outdir})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
