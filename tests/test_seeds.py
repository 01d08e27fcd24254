"""Tests for edmguide/sampler/seeds.py: per-seed generators, draw order, GI's hashed seeds, seed lists
and EDM2's batching of seeds over ranks."""

import random

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.seeds import (StackedRandomGenerator, draw_noise_and_labels, gi_hashed_seed, gi_seeds,
                            parse_seed_list, rank_batches, tuple_hash)

# Spec (c): (class, seeds) -> hashed seeds used by the GI figures.
HASHED = [
    (64, [6, 16, 12, 29], [523176147, 614721585, 188342235, 1612591891]),
    (959, [7, 8, 3, 4], [1038109154, 558163636, 611729804, 131784286]),
    (483, [8], [914211673]), (933, [9], [1654522224]), (483, [17], [1386363742]),
    (17, [19, 25, 7, 12, 16, 22], [1088801260, 753967348, 1857807971, 1903580690, 182476392, 1995126128]),
    (33, [13, 8, 6, 10, 15, 17], [1986550858, 1940778139, 653846640, 1080225990, 1125998709, 265446560]),
    (497, [29, 28, 27, 24, 23, 22], [1263829057, 1743774575, 2124381206, 1218056338, 1698001856, 2078608487]),
]
PAIRS = [(324, 2, 797033204), (360, 0, 1729724562), (105, 3, 697121040), (555, 14, 1429638142),
         (397, 21, 1121331535), (698, 3, 1052873828), (849, 21, 764808705), (970, 21, 621595141),
         (33, 19, 1552378059), (64, 25, 1086873654), (1, 13, 154737523), (504, 6, 194327788)]


def test_gi_hashed_seed_matches_spec_table():
    for cls, seeds, hashed in HASHED:
        assert [gi_hashed_seed(cls, s) for s in seeds] == hashed, cls
        assert gi_seeds(seeds, cls) == hashed
    for cls, seed, hashed in PAIRS:
        assert gi_hashed_seed(cls, seed) == hashed


def test_explicit_tuple_hash_equals_python_hash():
    rnd = random.Random(0)
    values = [0, 1, -1, -2, 2 ** 61 - 2, 2 ** 61 - 1, 2 ** 61, 2 ** 64 + 5, -(2 ** 70)] + \
             [rnd.randrange(-2 ** 40, 2 ** 40) for _ in range(200)]
    for _ in range(500):
        pair = (rnd.choice(values), rnd.choice(values))
        assert tuple_hash(pair) == hash(pair), pair
    for items in [(), (7,), (1, 2, 3), (-1, -1, -1, -1)]:
        assert tuple_hash(items) == hash(items)
    for cls in range(0, 1000, 37):
        for seed in range(0, 50000, 4999):
            assert gi_hashed_seed(cls, seed) == hash((cls, seed)) % 2 ** 31


def test_gi_seeds_are_not_hashed_for_class_zero_or_random_labels():
    assert gi_seeds([3, 4], 0) == [3, 4] and gi_seeds([3, 4], None) == [3, 4]


def test_stacked_generator_rows_equal_single_seed_streams():
    seeds = [0, 7, 2 ** 32 + 7]
    rng = StackedRandomGenerator('cpu', seeds)
    x = rng.randn([3, 2, 5])
    y = rng.randint(10, size=[3, 4])
    for k, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed % 2 ** 32)
        assert torch.equal(x[k], torch.randn([2, 5], generator=g))
        assert torch.equal(y[k], torch.randint(10, size=[4], generator=g))
    assert torch.equal(x[1], x[2])   # seeds are taken mod 2**32
    z = rng.randn_like(torch.zeros(3, 4, dtype=torch.float64))
    assert z.dtype == torch.float64 and z.shape == (3, 4)
    with pytest.raises(ValueError):
        rng.randn([2, 5])


class _Net:
    img_channels, img_resolution, label_dim = 3, 2, 10


def test_noise_is_drawn_before_label_and_same_in_every_mode():
    seeds = [11, 12]
    noise, labels = draw_noise_and_labels(StackedRandomGenerator('cpu', seeds), _Net())
    for k, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(noise[k], torch.randn([3, 2, 2], generator=g))
        assert labels[k].argmax().item() == torch.randint(10, size=[], generator=g).item()
        assert labels[k].sum().item() == 1 and labels.dtype == torch.float32
    for mode in ('edm2', 'gi'):
        n2, l2 = draw_noise_and_labels(StackedRandomGenerator('cpu', seeds), _Net(), class_idx=4, mode=mode)
        assert torch.equal(n2, noise) and torch.equal(l2, torch.eye(10)[[4, 4]])


def test_fixed_class_still_draws_label_in_edm2_but_not_in_gi():
    after = {}
    for mode in ('edm2', 'gi'):
        rng = StackedRandomGenerator('cpu', [5])
        draw_noise_and_labels(rng, _Net(), class_idx=2, mode=mode)
        after[mode] = rng.randn([1, 4])          # e.g. the first churn draw
    def expected(label_drawn):
        g = torch.Generator().manual_seed(5)
        torch.randn([3, 2, 2], generator=g)
        if label_drawn:
            torch.randint(10, size=[], generator=g)
        return torch.randn([4], generator=g)
    assert torch.equal(after['gi'][0], expected(False)) and torch.equal(after['edm2'][0], expected(True))
    assert not torch.equal(after['gi'], after['edm2'])


def test_unconditional_net_gets_no_labels_and_bad_class_is_user_error():
    class Uncond(_Net):
        label_dim = 0
    assert draw_noise_and_labels(StackedRandomGenerator('cpu', [1]), Uncond())[1] is None
    with pytest.raises(UserError):
        draw_noise_and_labels(StackedRandomGenerator('cpu', [1]), _Net(), class_idx=10)


def test_parse_seed_list_expands_inclusive_ranges():
    assert parse_seed_list('0-7,12') == [0, 1, 2, 3, 4, 5, 6, 7, 12]
    assert parse_seed_list('5') == [5] and parse_seed_list(' 3 - 4 , 9 ') == [3, 4, 9]
    assert parse_seed_list(range(3)) == [0, 1, 2]


@pytest.mark.parametrize('text', ['', '1,,2', 'a-b', '7-3', '1.5', '-3'])
def test_parse_seed_list_rejects_malformed_input(text):
    with pytest.raises(UserError, match='seed'):
        parse_seed_list(text)


def test_rank_batches_reproduce_edm2_split_of_50000_seeds_over_8_ranks():
    per_rank = [rank_batches(50000, 32, 8, r) for r in range(8)]
    chunks = [c for batches in per_rank for c in batches]
    sizes = [len(c) for c in chunks]
    assert len(chunks) == 1568 and sizes.count(32) == 1392 and sizes.count(31) == 176
    assert sorted(np.concatenate(chunks).tolist()) == list(range(50000))
    assert [len(b) for b in per_rank] == [196] * 8
    all_chunks = np.array_split(np.arange(50000), 1568)
    assert all(np.array_equal(a, b) for a, b in zip(per_rank[3], all_chunks[3::8]))


def test_rank_batches_keeps_empty_chunks_for_synchronisation():
    batches = [rank_batches(3, 32, 4, r) for r in range(4)]
    assert [len(b) for b in batches] == [1, 1, 1, 1]
    assert [len(b[0]) for b in batches] == [1, 1, 1, 0]
    assert [len(c) for c in rank_batches(70, 32)] == [24, 23, 23]


def test_fixed_chunks_do_not_depend_on_process_count_and_pad_ranks_equally():
    from edmguide.sampler.seeds import deal_chunks, fixed_chunks
    chunks = fixed_chunks(10, 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    rank0, rank1 = deal_chunks(chunks, 2, 0), deal_chunks(chunks, 2, 1)
    assert [c.tolist() for c in rank0] == [[0, 1, 2, 3], [8, 9]]
    assert [c.tolist() for c in rank1] == [[4, 5, 6, 7], []]  # padded: both ranks see 2 batches
    dealt = sorted((c.tolist() for r in range(3) for c in deal_chunks(chunks, 3, r) if len(c)), key=lambda c: c[0])
    assert dealt == [c.tolist() for c in chunks]  # every chunk exactly once, unchanged, whatever the rank count


#----------------------------------------------------------------------------
# Lazy seed lists: a billion seeds are never materialised.

def test_huge_seed_list_is_lazy_with_len_indexing_and_slicing():
    import time
    t0 = time.perf_counter()
    seeds = parse_seed_list('5,0-999999999,7')
    assert len(seeds) == 1_000_000_002
    assert (seeds[0], seeds[1], seeds[1_000_000_000], seeds[-1], seeds[-2]) == (5, 0, 999999999, 7, 999999999)
    part = seeds[999_999_998:1_000_000_002]
    assert list(part) == [999999997, 999999998, 999999999, 7] and len(seeds[10:20]) == 10
    assert seeds[:3] == [5, 0, 1] and list(seeds[1_000_000_001:]) == [7]
    with pytest.raises(IndexError):
        seeds[1_000_000_002]
    assert time.perf_counter() - t0 < 1  # (materialising would take minutes and ~40 GB)


@pytest.mark.parametrize('num, batch, world', [(0, 4, 1), (1, 4, 3), (7, 3, 2), (70, 32, 1), (1001, 8, 5), (50000, 32, 8)])
def test_rank_batches_are_numpy_array_split_computed_arithmetically(num, batch, world):
    num_batches = max((num - 1) // (batch * world) + 1, 1) * world
    brute = np.array_split(np.arange(num), num_batches)  # the definition, by brute force
    for rank in range(world):
        mine = rank_batches(num, batch, world, rank)
        expected = brute[rank::world]
        assert len(mine) == len(expected)
        assert all(list(a) == b.tolist() for a, b in zip(mine, expected))
        assert list(mine[-1]) == expected[-1].tolist() and [list(c) for c in mine[1:3]] == [c.tolist() for c in expected[1:3]]


def test_a_billion_seeds_split_over_ranks_start_at_once():
    chunks = rank_batches(1_000_000_000, 32, 8, 3)
    assert len(chunks) == 3_906_250
    assert chunks[0] == range(96, 128) and chunks[-1] == range(999_999_840, 999_999_872)  # chunk 31,249,995 of 31,250,000


def test_generation_iterator_starts_on_a_billion_seeds(tiny_pickles):
    import time
    from edmguide.nets import loading
    from edmguide.jobs.generation import generate_batches
    net, encoder = loading.load_network(tiny_pickles['uncond'])
    t0 = time.perf_counter()
    from edmguide.sampler.schedule import SamplerOptions
    batches = generate_batches(net, encoder.init('cpu') or encoder, parse_seed_list('0-999999999'),
                               SamplerOptions(num_steps=2).schedule(net), max_batch_size=2)
    first = next(batches)
    batches.close()
    assert first.seeds == [0, 1] and first.num_batches == 500_000_000
    assert time.perf_counter() - t0 < 20
