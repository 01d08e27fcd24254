"""End-to-end tests of calculate_metrics.py (both command-line forms), offline with fake detectors."""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import calculate_metrics
from edmguide.metrics import detectors
import helpers_metrics as hm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#----------------------------------------------------------------------------
# Fixtures.


@pytest.fixture
def images():
    return hm.random_images(12, seed=1)

@pytest.fixture
def image_dir(tmp_path, images):
    return hm.write_image_dir(tmp_path / 'imgs', images)

@pytest.fixture
def image_zip(tmp_path, images):
    return hm.write_image_zip(tmp_path / 'net-s0-nimg12-g2.00-gi.zip', images)

@pytest.fixture
def other_ref(tmp_path):
    """Reference stats of a different image set, with the fake detectors' feature sizes."""
    other = hm.random_images(20, seed=7)
    feats = hm.fake_inception_features(torch.from_numpy(other).permute(0, 3, 1, 2)).double().numpy()
    ref = {'num_images': 20, 'fid': {'mu': feats.mean(0), 'sigma': np.cov(feats, rowvar=False)}}
    path = tmp_path / 'other-ref.pkl'
    path.write_bytes(pickle.dumps(ref))
    return str(path), feats

def invoke(cli, args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result

def without_notes(stderr):
    """stderr without the 'note:' lines (e.g. that opening a pickle runs code from it)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith('note: ')]

def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = without_notes(result.stderr)
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

def files_under(folder):
    return sorted(os.path.join(root, name) for root, _dirs, names in os.walk(folder) for name in names)

def nchw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2)

#----------------------------------------------------------------------------
# Independent float64 references (no library code involved).

def assert_printed(printed, expected, decimals=None):
    """`printed` is `expected` written with `:g` (6 significant digits) or `:.{decimals}f`: they
    agree to half a unit in the last printed digit (plus 1e-9 relative for the computations'
    round-off, in case `expected` sits on a rounding boundary)."""
    if decimals is None:
        half_unit = 0.5 * 10.0 ** (math.floor(math.log10(abs(expected))) - 5)
    else:
        half_unit = 0.5 * 10.0 ** -decimals
        assert printed == f'{float(printed):.{decimals}f}', printed
    assert abs(float(printed) - expected) <= half_unit + 1e-9 * abs(expected), (printed, expected)

def gram_fd(f1, f2):
    """Fréchet distance of two feature sets [n, d] in float64, in data space: with A, B the
    centred features over sqrt(n - 1), S1 = A^T A and S2 = B^T B, so tr S = |A|_F^2 and the
    nonzero eigenvalues of S1 S2 are those of (B A^T)^T (B A^T), i.e. tr sqrt(S1 S2) is the sum of
    the singular values of the small matrix B A^T. Exact for rank-deficient covariances (few
    images, linearly dependent features), where scipy's sqrtm is good to ~1e-3 only."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    a = (f1 - f1.mean(0)) / np.sqrt(len(f1) - 1)
    b = (f2 - f2.mean(0)) / np.sqrt(len(f2) - 1)
    trace_sqrt = np.linalg.svd(b @ a.T, compute_uv=False).sum()
    return float(np.square(f1.mean(0) - f2.mean(0)).sum() + np.square(a).sum() + np.square(b).sum()
                 - 2 * trace_sqrt)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)

def pil_resize_224(images):
    """Guidance-interval's preprocessing: PIL bicubic to 224x224 per image, back to uint8."""
    out = [np.asarray(PIL.Image.fromarray(image, 'RGB').resize((224, 224), PIL.Image.BICUBIC)) for image in images]
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float64)

def torch_resize_224(images):
    """EDM2's preprocessing: antialiased bicubic on float pixels, no rounding."""
    out = torch.nn.functional.interpolate(nchw(images).to(torch.float32), size=(224, 224), mode='bicubic',
                                          antialias=True)
    return out.double().numpy()

def fake_dinov2_features64(resized):
    """The fake DINOv2 of helpers_metrics (2x2 average pooling + channel means) of ImageNet-normalised
    224x224 pixels, written out in float64 numpy."""
    x = (resized / 255 - IMAGENET_MEAN) / IMAGENET_STD
    n = len(x)
    pooled = x.reshape(n, 3, 2, 112, 2, 112).mean(axis=(3, 5)).reshape(n, 12)
    return np.concatenate([pooled, x.mean(axis=(2, 3))], axis=1)

def brightness_fd(images1, images2):
    """Fréchet distance of per-image, per-channel mean brightness (uint8 NHWC sets), in float64:
    explicit sums for means and (n-1) covariances, tr sqrt(S1 S2) as the eigenvalues of
    sqrt(S1) S2 sqrt(S1) with sqrt(S1) from eigh (3x3, full rank)."""
    def stats(images):
        feats = images.astype(np.float64).sum(axis=(1, 2)) / (images.shape[1] * images.shape[2]) # [n, 3]
        mu = feats.sum(0) / len(feats)
        centred = feats - mu
        return mu, centred.T @ centred / (len(feats) - 1)
    (mu1, s1), (mu2, s2) = stats(images1), stats(images2)
    lam, vec = np.linalg.eigh(s1)
    assert lam.min() > 1e-6 * lam.max() # well conditioned, so the eigenvalue route is exact
    root1 = (vec * np.sqrt(lam)) @ vec.T
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)

def write_ref(path, name, feats):
    """A reference pickle whose `name` statistics are the float64 mean/covariance of `feats`."""
    feats = np.asarray(feats, np.float64)
    centred = feats - feats.sum(0) / len(feats)
    stats = {'mu': feats.sum(0) / len(feats), 'sigma': centred.T @ centred / (len(feats) - 1)}
    path.write_bytes(pickle.dumps({'num_images': len(feats), name: stats}))
    return str(path)

#----------------------------------------------------------------------------
# Guidance-interval form.

def test_gi_form_prints_fid_and_appends_jsonl(cache, tmp_path, image_zip, images, other_ref):
    ref_path, ref_feats = other_ref
    results = tmp_path / 'results'
    feats = hm.fake_inception_features(nchw(images)).numpy()
    expected, tol = hm.reference_fd(feats, ref_feats), hm.fd_tolerance(feats, ref_feats)
    for _ in range(2):
        result = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', ref_path,
                                                   '--metric', 'fid', '--results_dir', str(results),
                                                   '--batch_size', '5'])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().splitlines()[-1] == f'FID = {expected:.2f}'
    hm.assert_prints_as(json.loads((results / 'fid.jsonl').read_text().splitlines()[0])['fid'], expected, tol)
    lines = (results / 'fid.jsonl').read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert list(record) == ['gen_zip', 'fid', 'num_gen_images']
    assert record['gen_zip'] == 'net-s0-nimg12-g2.00-gi'
    assert record['num_gen_images'] == 12

def test_gi_form_fd_dinov2_uses_pil_resize(cache, tmp_path, image_zip, image_dir, images):
    # Expected features of the same 12 images under both preprocessings, in float64. The detector
    # itself runs in float32 (features off by ~1e-6), which bounds how sharp the checks can be.
    feats_pil = fake_dinov2_features64(pil_resize_224(images))
    feats_torch = fake_dinov2_features64(torch_resize_224(images))
    pil_vs_torch = gram_fd(feats_pil, feats_torch)
    assert 1e-4 < pil_vs_torch < 1e-3 # what the test below measures: the resizes differ, slightly
    # The EDM2 `ref` command resizes with torch: its statistics are those of the torch features.
    ref_path = tmp_path / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(ref_path),
                                                 '--metrics', 'fd_dinov2', '--workers', '0'])
    assert result.exit_code == 0, result.output
    with open(ref_path, 'rb') as f:
        ref = pickle.load(f)['fd_dinov2']
    assert np.abs(feats_pil.mean(0) - feats_torch.mean(0)).max() > 5e-4 # 50x the tolerance below
    np.testing.assert_allclose(ref['mu'], feats_torch.mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ref['sigma'], np.cov(feats_torch, rowvar=False), rtol=0, atol=5e-5)

    def gi_value(ref_file, results):
        result = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', ref_file,
                                                   '--metric', 'fd_dinov2', '--results_dir', str(results)])
        assert result.exit_code == 0, result.output
        value = json.loads((results / 'fd_dinov2.jsonl').read_text())['fd_dinov2']
        assert result.stdout.strip() == f'FD_DINOv2 = {value:.2f}'
        return value

    # The GI form resizes with PIL: against the torch reference it measures exactly the PIL/torch
    # difference (3e-3 relative: float32 detector round-off; a bilinear, Lanczos, non-antialiased
    # or rounded resize on either side gives a value 2x to 10x off).
    assert gi_value(str(ref_path), tmp_path / 'vs-torch') == pytest.approx(pil_vs_torch, rel=3e-3)
    # Against a reference of the PIL-resized features (made here), it is zero up to that round-off
    # (~1e-9, over 3000x below the PIL/torch value): it fails if the resize mode were ignored.
    pil_ref = write_ref(tmp_path / 'pil-ref.pkl', 'fd_dinov2', feats_pil)
    assert abs(gi_value(pil_ref, tmp_path / 'vs-pil')) < 1e-7

def test_gi_form_dispatch_by_subprocess(cache, tmp_path, image_zip, images, other_ref):
    expected = hm.reference_fd(hm.fake_inception_features(nchw(images)).numpy(), other_ref[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
    cmd = [sys.executable, os.path.join(ROOT, 'calculate_metrics.py'), '--gen_zip', image_zip,
           '--ref_path', other_ref[0], '--results_dir', str(tmp_path / 'r')]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    label, printed = proc.stdout.strip().split(' = ')
    assert label == 'FID'
    assert_printed(printed, expected, decimals=2)
    # An error is one line on stderr, exit 1, and nothing is appended.
    proc = subprocess.run(cmd[:3] + [str(tmp_path / 'missing.zip')] + cmd[4:], env=env,
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stdout == ''
    assert len(without_notes(proc.stderr)) == 1 and 'missing.zip' in proc.stderr
    assert len((tmp_path / 'r' / 'fid.jsonl').read_text().splitlines()) == 1

#----------------------------------------------------------------------------
# EDM2 form.

def test_ref_then_calc_of_same_set_is_zero(cache, tmp_path, image_dir, image_zip):
    dest = tmp_path / 'new' / 'sub' / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(dest),
                                                 '--batch', '5', '--workers', '0'])
    assert result.exit_code == 0, result.output
    with open(dest, 'rb') as f:
        ref = pickle.load(f)
    assert list(ref) == ['num_images', 'fid', 'fd_dinov2'] and ref['num_images'] == 12
    assert ref['fid']['mu'].dtype == np.float64 and ref['fid']['sigma'].shape == (15, 15)
    assert ref['fd_dinov2']['mu'].shape == (15,)
    assert [p for p in os.listdir(dest.parent) if p != 'ref.pkl'] == [] # no temp files left
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_zip, '--ref', str(dest),
                                                 '--num', '12', '--batch', '4', '--workers', '0'])
    assert result.exit_code == 0, result.output
    # The same images batched differently (sums in another order): the statistics differ by round-off,
    # and a distance within its round-off bound of zero is printed and written as 0, never -4.5e-13.
    assert result.stdout.strip().splitlines() == ['fid = 0', 'fd_dinov2 = 0']
    results = tmp_path / 'results'
    gi = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', str(dest), '--results_dir', str(results),
                                           '--batch_size', '7'])
    assert gi.exit_code == 0, gi.output
    assert gi.stdout.strip().splitlines()[-1] == 'FID = 0.00'
    record = json.loads((results / 'fid.jsonl').read_text())
    assert record['fid'] == 0.0 and str(record['fid']) == '0.0'

def test_calc_on_directory_matches_independent_fd(cache, image_dir, images, other_ref):
    ref_path, ref_feats = other_ref
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', ref_path,
                                                 '--metrics', 'fid', '--num', '12', '--workers', '1'])
    assert result.exit_code == 0, result.output
    expected = hm.reference_fd(hm.fake_inception_features(nchw(images)).numpy(), ref_feats)
    assert result.stdout.strip() == f'fid = {expected:g}'

def test_calc_subset_follows_seeded_shuffle(cache, image_dir, images, other_ref):
    ref_path, ref_feats = other_ref
    subset = np.arange(12)
    np.random.RandomState(5).shuffle(subset)
    subset = np.sort(subset[:7])
    expected = hm.reference_fd(hm.fake_inception_features(nchw(images[subset])).numpy(), ref_feats)
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', ref_path,
                                                 '--metrics', 'fid', '--num', '7', '--seed', '5',
                                                 '--workers', '0'])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f'fid = {expected:g}'

def test_calc_with_npz_reference_measures_fid_only(cache, tmp_path, image_dir, images, other_ref):
    _ref_path, ref_feats = other_ref
    npz = tmp_path / 'ref.NPZ'
    with open(npz, 'wb') as f: # upper-case extension: detection is case-insensitive
        np.savez(f, mu=ref_feats.mean(0), sigma=np.cov(ref_feats, rowvar=False))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(npz),
                                                 '--num', '12', '--workers', '0'])
    assert result.exit_code == 0, result.output
    out = result.stdout.strip().splitlines()
    assert out[0].startswith('note: skipping fd_dinov2') and 'ref.NPZ' in out[0]
    assert len(out) == 2 and out[1].split(' = ')[0] == 'fid'
    expected = hm.reference_fd(hm.fake_inception_features(nchw(images)).numpy(), ref_feats)
    assert_printed(out[1].split(' = ')[1], expected)

def test_a_bad_image_seen_by_one_torchrun_rank_stops_every_rank_with_its_line(cache, tmp_path, image_dir):
    """With 12 images in batches of 3 over 2 ranks, image 9 is read by rank 1 only. Rank 0 must not
    wait for it in the final all-reduce: both ranks print rank 1's line and exit, nothing is written."""
    with open(os.path.join(image_dir, '000009.png'), 'wb') as f:
        f.write(b'not a png')
    env = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=cache,
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
    dest = tmp_path / 'ref.pkl'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'calculate_metrics.py'), 'ref', '--data', image_dir, '--dest', str(dest),
           '--batch', '3', '--workers', '0', '--metrics', 'fid']
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 2 and errors[0] == errors[1] and '000009.png' in errors[0], result.stderr[-3000:]
    assert 'UserError' not in result.stderr  # torchrun's own failure report follows, but no worker traceback
    assert not dest.exists()

def test_registered_metric_is_usable_from_the_cli(cache, tmp_path, image_dir, images):
    class Brightness(detectors.Detector):
        def __call__(self, images):
            return images.float().mean(dim=(2, 3))
    detectors.register_metric('fd_test', Brightness)
    try:
        others = hm.random_images(20, seed=7)
        for name, data, expected in [('other', hm.write_image_dir(tmp_path / 'other', others),
                                      brightness_fd(images, others)),
                                     ('same', image_dir, 0.0)]:
            dest = tmp_path / f'ref-{name}.pkl'
            result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', data, '--dest', str(dest),
                                                         '--metrics', 'fd_test', '--workers', '0'])
            assert result.exit_code == 0, result.output
            result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(dest),
                                                         '--metrics', 'fd_test', '--num', '12', '--workers', '0'])
            assert result.exit_code == 0, result.output
            label, printed = result.stdout.strip().split(' = ')
            assert label == 'fd_test'
            if expected:
                assert expected > 100 # brightness differs between the sets: a real distance, not round-off
                assert_printed(printed, expected)
            else: # same images: zero up to float64 round-off (features ~100, distances ~1e3)
                assert abs(float(printed)) < 1e-9
    finally:
        detectors.unregister_metric('fd_test')

#----------------------------------------------------------------------------
# Errors: one line, exit 1, nothing written.

def test_calc_errors(cache, tmp_path, image_dir, other_ref):
    ref_path, _ = other_ref
    calc = ['calc', '--images', image_dir, '--ref', ref_path, '--workers', '0']
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, calc + ['--num', '13']),
                          'Found 12 images, but expected at least 13')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, calc + ['--metrics', 'fd_dinov2', '--num', '5']),
                          'no statistics for metric "fd_dinov2"', 'other-ref.pkl')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, calc + ['--metrics', 'fid,nope', '--num', '5']),
                          'Invalid metric "nope"')
    bad_dim = tmp_path / 'bad-dim.pkl'
    bad_dim.write_bytes(pickle.dumps({'fid': {'mu': np.zeros(2048), 'sigma': np.eye(2048)}}))
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(bad_dim),
                                                              '--num', '5', '--workers', '0']),
                          'gives 15 features, but the reference has 2048')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['calc', '--images', str(tmp_path / 'nothing'),
                                                              '--ref', ref_path, '--workers', '0']),
                          'nothing', 'no such file')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref',
                                                              str(tmp_path / 'no-ref.pkl')]),
                          'no-ref.pkl', 'not found')
    garbage = tmp_path / 'garbage.pkl'
    garbage.write_bytes(b'this is not a pickle')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(garbage)]),
                          'garbage.pkl', 'cannot read reference')

@pytest.mark.parametrize('workers', [0, 1])
def test_unreadable_entry_is_one_line_error(cache, tmp_path, images, other_ref, workers):
    bad_zip = hm.write_image_zip(tmp_path / 'bad.zip', images[:4], extra={'000009.png': b'not a png',
                                                                          'notes.txt': b'ignored'})
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', bad_zip, '--ref', other_ref[0],
                                                 '--metrics', 'fid', '--num', '5', '--batch', '2',
                                                 '--workers', str(workers)])
    assert_one_line_error(result, 'bad.zip', '000009.png', 'cannot read image')

def test_mismatched_image_shape_is_one_line_error(cache, tmp_path, images, other_ref):
    folder = hm.write_image_dir(tmp_path / 'mixed', images[:3])
    hm.write_image_dir(folder, hm.random_images(1, size=8), names=['sub/zzz.png'])
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', other_ref[0],
                                                 '--num', '4', '--workers', '0'])
    assert_one_line_error(result, os.path.join('sub', 'zzz.png'), 'shape [3, 8, 8]')

def test_ref_errors_write_nothing(cache, tmp_path, images):
    one = hm.write_image_dir(tmp_path / 'one', images[:1])
    dest = tmp_path / 'out' / 'ref.pkl'
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['ref', '--data', one, '--dest', str(dest),
                                                              '--workers', '0']),
                          'need at least 2')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no images here')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, ['ref', '--data', str(empty), '--dest', str(dest)]),
                          'no image files found')
    assert not dest.exists()

def test_gi_form_errors_append_nothing(cache, tmp_path, image_zip, other_ref):
    results = tmp_path / 'results'
    gi = ['--gen_zip', image_zip, '--ref_path', other_ref[0], '--results_dir', str(results)]
    assert_one_line_error(invoke(calculate_metrics.gi_cli, gi + ['--metric', 'kid']), 'Invalid metric "kid"')
    assert_one_line_error(invoke(calculate_metrics.gi_cli, gi + ['--metric', 'fd_dinov2']),
                          'no statistics for metric "fd_dinov2"')
    assert not results.exists()

#----------------------------------------------------------------------------
# gen: metrics of a network's samples, generated on the fly.

def test_gen_matches_calc_on_the_same_generated_images(cache, tmp_path, tiny_pickles):
    from edmguide.jobs import generation
    from edmguide.nets import loading
    net, encoder = loading.load_network(tiny_pickles['cond'])
    from edmguide.sampler.schedule import SamplerOptions
    schedule = SamplerOptions(num_steps=4).schedule(net)
    images = torch.cat([b.images for b in generation.generate_batches(net, encoder, range(3, 9), schedule)])
    folder = hm.write_image_dir(tmp_path / 'gen', images.permute(0, 2, 3, 1).numpy())
    dest = tmp_path / 'ref.pkl'
    assert invoke(calculate_metrics.edm2_cli, ['ref', '--data', hm.write_image_dir(tmp_path / 'other', hm.random_images(8)),
                                               '--dest', str(dest), '--workers', '0']).exit_code == 0
    calc = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', str(dest), '--num', '6',
                                               '--workers', '0'])
    assert calc.exit_code == 0, calc.output
    before = files_under(tmp_path)
    gen = invoke(calculate_metrics.edm2_cli, ['gen', '--net', tiny_pickles['cond'], '--ref', str(dest),
                                              '--num', '6', '--seed', '3', '--steps', '4', '--batch', '4'])
    assert gen.exit_code == 0, gen.output
    assert gen.stdout == calc.stdout and gen.stdout.startswith('fid = ')
    assert files_under(tmp_path) == before # no images written

def test_gen_with_guidance_interval_and_errors(cache, tmp_path, tiny_pickles, image_dir):
    dest = tmp_path / 'ref.pkl'
    assert invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(dest),
                                               '--metrics', 'fid', '--workers', '0']).exit_code == 0
    base = ['gen', '--net', tiny_pickles['cond'], '--ref', str(dest), '--metrics', 'fid', '--num', '2', '--steps', '4']
    guided = base + ['--gnet', tiny_pickles['uncond'], '--guidance', '2']
    unguided = invoke(calculate_metrics.edm2_cli, base)
    assert unguided.exit_code == 0 and unguided.stdout.startswith('fid = '), unguided.output
    by_steps = invoke(calculate_metrics.edm2_cli, guided + ['--guidance_interval', '[1, 2]'])
    assert by_steps.exit_code == 0, by_steps.output
    assert by_steps.stdout.startswith('fid = ') and by_steps.stdout != unguided.stdout
    by_sigma = invoke(calculate_metrics.edm2_cli, guided + ['--guidance_sigma', '0.5,20'])
    assert by_sigma.exit_code == 0, by_sigma.output
    assert by_sigma.stdout.startswith('fid = ') and by_sigma.stdout != unguided.stdout
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, base + ['--guidance', '2']),
                          'Please specify --gnet when using guidance')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, guided + ['--guidance_interval', '[1, 2]',
                                                                       '--guidance_sigma', '0.5,20']),
                          'not both')
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, base + ['--metrics', 'fid,fd_dinov2']),
                          'no statistics for metric "fd_dinov2"')

#----------------------------------------------------------------------------



def test_unknown_device_is_a_one_line_error_in_both_forms(cache, tmp_path, image_zip, other_ref):
    ref_path = other_ref[0]
    gi = ['--gen_zip', image_zip, '--ref_path', ref_path, '--results_dir', str(tmp_path / 'results')]
    assert_one_line_error(invoke(calculate_metrics.gi_cli, gi + ['--device', 'bogus']), "--device 'bogus'")
    assert not (tmp_path / 'results').exists()
    calc = ['calc', '--images', image_zip, '--ref', ref_path, '--metrics', 'fid', '--num', '2', '--device', 'bogus']
    assert_one_line_error(invoke(calculate_metrics.edm2_cli, calc), "--device 'bogus'")

#----------------------------------------------------------------------------
# Outputs checked before the work, results printed before they are written, nothing wrong written.

def test_gi_form_under_torchrun_prints_and_appends_exactly_once(cache, tmp_path, image_zip, images, other_ref):
    env = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=cache,
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'calculate_metrics.py'), '--gen_zip', image_zip, '--ref_path', other_ref[0],
           '--results_dir', str(tmp_path / 'r'), '--batch_size', '4']
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    feats = hm.fake_inception_features(nchw(images)).numpy()
    expected, tol = hm.reference_fd(feats, other_ref[1]), hm.fd_tolerance(feats, other_ref[1])
    printed = [line for line in result.stdout.splitlines() if line.startswith('FID = ')]
    assert printed == [f'FID = {expected:.2f}']
    records = [json.loads(line) for line in (tmp_path / 'r' / 'fid.jsonl').read_text().splitlines()]
    assert len(records) == 1 and records[0]['num_gen_images'] == 12  # both ranks' shares, measured once
    hm.assert_prints_as(records[0]['fid'], expected, tol)
    # And bit for bit the single-process value (fixed chunks, features fed in seed order), here with
    # 3 threads against the ranks' 1, which reorders any thread-split sum.
    single = subprocess.run(cmd[:1] + cmd[5:-4] + ['--results_dir', str(tmp_path / 's'), '--batch_size', '4'],
                            cwd=ROOT, env=dict(env, OMP_NUM_THREADS='3'), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads((tmp_path / 's' / 'fid.jsonl').read_text())['fid'] == records[0]['fid']

def test_unwritable_output_locations_fail_before_any_input_is_read(cache, tmp_path, image_zip):
    (tmp_path / 'a-file').write_text('')
    missing = str(tmp_path / 'missing-ref.pkl')  # would fail if it were read first
    result = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', missing,
                                               '--results_dir', str(tmp_path / 'a-file' / 'r')])
    assert_one_line_error(result, '--results_dir', 'a-file', 'is a file')
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', str(tmp_path / 'no-data'),
                                                 '--dest', str(tmp_path / 'a-file' / 'ref.pkl')])
    assert_one_line_error(result, '--dest', 'a-file')
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', str(tmp_path / 'no-data'), '--dest', str(tmp_path)])
    assert_one_line_error(result, '--dest', 'is a directory')

def test_the_value_is_printed_before_the_record_is_written(cache, tmp_path, image_zip, images, other_ref):
    results = tmp_path / 'r'
    (results / 'fid.jsonl').mkdir(parents=True)  # appending to it fails after the measurement
    result = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', other_ref[0],
                                               '--results_dir', str(results)])
    expected = hm.reference_fd(hm.fake_inception_features(nchw(images)).numpy(), other_ref[1])
    assert result.stdout.strip() == f'FID = {expected:.2f}'  # the measurement is not lost
    assert_one_line_error(result, str(results / 'fid.jsonl'))

def test_a_non_finite_result_is_neither_printed_nor_written(cache, tmp_path, image_zip, other_ref, monkeypatch):
    from edmguide.metrics import kinds, pipeline
    monkeypatch.setattr(kinds, 'frechet_distance', lambda *args: float('nan'))
    results = tmp_path / 'r'
    result = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_zip, '--ref_path', other_ref[0],
                                               '--results_dir', str(results)])
    assert_one_line_error(result, 'fid is not finite')
    assert result.stdout == '' and not (results / 'fid.jsonl').exists()
    with pytest.raises(ValueError):  # the record writer itself refuses NaN (not JSON)
        pipeline.append_jsonl(str(tmp_path / 'x.jsonl'), {'fid': float('nan')})

def test_a_bad_reference_is_one_line_before_the_feature_pass(cache, tmp_path, image_dir, monkeypatch):
    from edmguide.metrics import pipeline
    path = tmp_path / 'nan-ref.pkl'
    path.write_bytes(pickle.dumps({'fid': {'mu': np.full(15, np.nan), 'sigma': np.eye(15)}}))
    monkeypatch.setattr(pipeline, 'compute_accumulators_for_images', lambda *a, **k: pytest.fail('feature pass started'))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(path)])
    assert_one_line_error(result, str(path), 'mu has 15 NaN values (every value)')

@pytest.mark.parametrize('fill, message', [('all', 'has 80 NaN values (every value)'), ('one', 'has 1 NaN value;')])
def test_nan_precision_recall_reference_features_are_named_with_the_file(cache, tmp_path, image_dir, monkeypatch, fill, message):
    # Today's message for all-NaN features was a float16-range complaint without the file; NaN is named,
    # with the file and the metric, before any feature pass (the gi form reads the same reference).
    from edmguide.metrics import pipeline
    features = np.ones((5, 16), np.float16)
    if fill == 'all':
        features[:] = np.nan
    else:
        features[2, 3] = np.nan
    path = tmp_path / 'nan-pr.pkl'
    path.write_bytes(pickle.dumps({'num_images': 5, 'pr': {'features': features}}))
    monkeypatch.setattr(pipeline, 'compute_accumulators_for_images', lambda *a, **k: pytest.fail('feature pass started'))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', str(path), '--metrics', 'pr',
                                                 '--num', '12'])
    assert_one_line_error(result, f'{path}: "pr" reference features', message)
    gi = invoke(calculate_metrics.gi_cli, ['--gen_zip', image_dir, '--ref_path', str(path), '--metric', 'pr',
                                           '--results_dir', str(tmp_path / 'results')])
    assert_one_line_error(gi, str(path), message)

def test_a_full_disk_is_named_with_the_path(tmp_path, capsys):
    from edmguide.util.errors import run_cli
    from edmguide.metrics import pipeline
    if not os.path.exists('/dev/full'):
        pytest.skip('needs /dev/full')
    with pytest.raises(SystemExit):
        run_cli(pipeline.append_jsonl, '/dev/full', {'fid': 1.0})
    assert capsys.readouterr().err.strip() == 'error: /dev/full: No space left on device'

def test_help_of_every_form_that_opens_a_pickle_says_it_runs_code():
    for cli, args in [(calculate_metrics.gi_cli, ['--help']), (calculate_metrics.edm2_cli, ['calc', '--help']),
                      (calculate_metrics.edm2_cli, ['gen', '--help'])]:
        text = ' '.join(invoke(cli, args).output.split())
        assert 'contain Python code that runs when they are opened' in text, args


def test_errors_with_an_obvious_next_step_name_it(cache, image_dir, other_ref, monkeypatch):
    from edmguide.util.errors import UserError
    from edmguide.metrics import pipeline
    ref_path, _ = other_ref
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', ref_path, '--workers', '0',
                                                 '--num', '13'])
    assert_one_line_error(result, 'expected at least 13', '--num=12')

    def no_inception(name, **kwargs):
        raise UserError('cannot load the Inception-v3 detector: not in the cache')
    monkeypatch.setattr(detectors, 'get_detector', no_inception)
    with pytest.raises(UserError, match='use --metrics=fd_digits'):
        pipeline.build_detectors(['fid'])


# Precision/recall ('pr': the fake VGG-16 of helpers_metrics; features stored in the reference).

def brute_force_pr(real, gen, k=3):
    """Precision and recall in float64 from all pairwise distances of float16-rounded features."""
    real = np.asarray(real, np.float16).astype(np.float64)
    gen = np.asarray(gen, np.float16).astype(np.float64)
    def share_inside(manifold, probes):
        within = np.sqrt(((manifold[:, None] - manifold[None]) ** 2).sum(-1))
        radii = np.sort(within, axis=1)[:, k] # index 0: the point itself
        across = np.sqrt(((probes[:, None] - manifold[None]) ** 2).sum(-1))
        return float((across <= radii[None]).any(axis=1).mean())
    return share_inside(real, gen), share_inside(gen, real)

def test_ref_stores_pr_features_and_calc_reports_precision_and_recall(cache, tmp_path, images):
    others = hm.random_images(20, seed=7) // 2 # darker than the white images below
    data = hm.write_image_dir(tmp_path / 'other', others)
    dest = tmp_path / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', data, '--dest', str(dest), '--metrics', 'fid,pr',
                                                 '--workers', '0', '--batch', '7'])
    assert result.exit_code == 0, result.output
    ref = pickle.loads(dest.read_bytes())
    real = hm.fake_vgg16_features(nchw(others)).numpy()
    assert ref['pr']['features'].dtype == np.float16
    np.testing.assert_array_equal(ref['pr']['features'], real.astype(np.float16)) # all 20, in file order
    assert set(ref['fid']) == {'mu', 'sigma'} and ref['num_images'] == 20
    images = np.concatenate([hm.random_images(8, seed=9) // 2, np.full_like(images[:4], 255)]) # 4 white: outside the real set
    gen_dir = hm.write_image_dir(tmp_path / 'gen', images)
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', gen_dir, '--ref', str(dest), '--metrics', 'fid,pr',
                                                 '--num', '12', '--workers', '0', '--batch', '5'])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split(' = ')[0] for line in lines] == ['fid', 'precision', 'recall']
    precision, recall = brute_force_pr(real, hm.fake_vgg16_features(nchw(images)).numpy())
    assert 0 < precision < 1 # not a trivial case
    assert_printed(lines[1].split(' = ')[1], precision)
    assert_printed(lines[2].split(' = ')[1], recall)
    # The guidance-interval form: Precision/Recall lines and one jsonl record.
    results = tmp_path / 'results'
    gi = invoke(calculate_metrics.gi_cli, ['--gen_zip', hm.write_image_zip(tmp_path / 'g.zip', images), '--ref_path',
                                           str(dest), '--metric', 'pr', '--results_dir', str(results)])
    assert gi.exit_code == 0, gi.output
    assert gi.stdout.strip().splitlines()[-2:] == [f'Precision = {precision:.3f}', f'Recall = {recall:.3f}']
    record = json.loads((results / 'pr.jsonl').read_text())
    assert list(record) == ['gen_zip', 'precision', 'recall', 'num_gen_images'] and record['num_gen_images'] == 12

def test_ref_keeps_the_first_images_in_file_order_for_pr_by_default_as_pr50k3(cache, tmp_path, image_dir, images):
    # pr50k3's real set is the first 200k dataset items in order, not a random draw: by default `ref`
    # stores the features of the first --pr_num files (sorted names, as the image reader orders them).
    dest = tmp_path / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(dest), '--metrics', 'fid,pr',
                                                 '--pr_num', '5', '--seed', '3', '--workers', '0', '--batch', '2'])
    assert result.exit_code == 0, result.output
    ref = pickle.loads(dest.read_bytes())
    assert ref['num_images'] == 12
    names = sorted(os.listdir(image_dir))
    assert names == sorted(names, key=lambda n: int(n.split('.')[0])) # files 0..11 sort in image order
    from edmguide.metrics.image_files import select_subset
    assert list(select_subset(12, 5, seed=3)) != list(range(5)) # the seeded draw would store other images
    first = hm.fake_vgg16_features(nchw(images[:5])).numpy().astype(np.float16)
    np.testing.assert_array_equal(ref['pr']['features'], first)
    bad = invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(tmp_path / 'x.pkl'),
                                              '--metrics', 'pr', '--pr_subset', 'shuffled'])
    assert bad.exit_code != 0 and not (tmp_path / 'x.pkl').exists()

def test_ref_keeps_a_seeded_subset_for_pr_when_asked_and_all_images_for_fid(cache, tmp_path, image_dir, images):
    from edmguide.metrics.image_files import select_subset
    dest = tmp_path / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', image_dir, '--dest', str(dest), '--metrics', 'fid,pr',
                                                 '--pr_num', '5', '--pr_subset', 'random', '--seed', '3', '--workers', '0'])
    assert result.exit_code == 0, result.output
    ref = pickle.loads(dest.read_bytes())
    assert ref['num_images'] == 12
    # The same float32 features on both sides; only the order of 12 float64 additions differs
    # (relative error below 12 * eps = 3e-15); 1e-12 leaves room and still catches any other feature.
    np.testing.assert_allclose(ref['fid']['mu'], hm.fake_inception_features(nchw(images)).double().numpy().mean(0), rtol=1e-12)
    subset = hm.fake_vgg16_features(nchw(images[select_subset(12, 5, seed=3)])).numpy().astype(np.float16)
    np.testing.assert_array_equal(ref['pr']['features'], subset)

def test_reference_without_features_says_how_to_make_one(cache, tmp_path, image_dir, other_ref):
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', image_dir, '--ref', other_ref[0], '--metrics', 'pr',
                                                 '--num', '12', '--workers', '0'])
    assert_one_line_error(result, 'no reference features for metric "pr"',
                          'python calculate_metrics.py ref --data=DATASET --dest=REF.pkl --metrics=pr')
