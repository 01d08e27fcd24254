"""edmguide.models.sdxl: the EDM adapter around a tiny SD-XL diffusers folder built here (offline, CPU)."""

import json
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np
import PIL.Image
import pytest
import torch

import generate_images
from cli_helpers import invoke
from edmguide.sampler import sampling
from edmguide.models import sdxl
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.sampler.sampling import EvalCounter

_WORDS = ['a', 'cat', 'dog', 'photo', 'of', 'red']


def _write_tokenizer(folder):
    os.makedirs(folder, exist_ok=True)
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1}
    for ch in 'abcdefghijklmnopqrstuvwxyz':
        vocab[ch] = len(vocab)
        vocab[ch + '</w>'] = len(vocab)
    for word in _WORDS:
        vocab.setdefault(word + '</w>', len(vocab))
    with open(os.path.join(folder, 'vocab.json'), 'w') as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, 'merges.txt'), 'w') as f:
        f.write('#version: 0.2\n')
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(folder, 'vocab.json'), os.path.join(folder, 'merges.txt'), model_max_length=8)
    tok.save_pretrained(folder)
    return len(vocab)


@pytest.fixture(scope='session')
def tiny_sdxl(tmp_path_factory):
    """A local diffusers folder with tiny random SD-XL components (unet, vae, 2 encoders, 2 tokenizers)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    root = tmp_path_factory.mktemp('tiny-sdxl')
    torch.manual_seed(0)
    vocab_size = _write_tokenizer(str(root / 'tokenizer'))
    _write_tokenizer(str(root / 'tokenizer_2'))
    common = dict(vocab_size=vocab_size, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=8,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, **common)).save_pretrained(root / 'text_encoder')
    CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, intermediate_size=64, projection_dim=32, **common)
                                ).save_pretrained(root / 'text_encoder_2')
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=16 + 32, attention_head_dim=(2, 4), norm_num_groups=32,
        addition_embed_type='text_time', addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8)
    with torch.no_grad():  # random output layer, so the net's output depends on its input
        unet.conv_out.weight.normal_(0, 0.05)
    unet.save_pretrained(root / 'unet')
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2,
                  norm_num_groups=8, sample_size=16).save_pretrained(root / 'vae')
    os.makedirs(root / 'scheduler')
    (root / 'scheduler' / 'scheduler_config.json').write_text(json.dumps(dict(
        _class_name='EulerDiscreteScheduler', beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
        num_train_timesteps=1000, prediction_type='epsilon')))
    (root / 'model_index.json').write_text(json.dumps(dict(_class_name='StableDiffusionXLPipeline',
                                                           force_zeros_for_empty_prompt=True)))
    return str(root)


@pytest.fixture(scope='session')
def model(tiny_sdxl):
    return sdxl.load_sdxl(tiny_sdxl, 'cpu')


def _reference_sigmas():
    """The SD-XL training levels in numpy float64, from the betas."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


def test_sigma_quantisation_is_nearest_training_level(model):
    ref = _reference_sigmas()
    np.testing.assert_allclose(model.denoiser.sigmas.numpy(), ref, rtol=1e-12)
    rng = np.random.default_rng(0)
    queries = np.concatenate([np.exp(rng.uniform(np.log(0.01), np.log(20), 200)), ref[[0, 500, 999]], [14.61, 0.03]])
    expected = np.array([np.argmin(np.abs(ref - q)) for q in queries])
    got = model.denoiser.sigma_index(torch.tensor(queries)).numpy()
    assert (got == expected).all()
    np.testing.assert_allclose(model.denoiser.round_sigma(torch.tensor(queries)).numpy(), ref[expected], rtol=1e-12)
    assert model.denoiser.sigma_min == pytest.approx(ref[0]) and model.denoiser.sigma_max == pytest.approx(ref[-1])


@pytest.mark.parametrize('prediction', ['epsilon', 'v_prediction'])
def test_denoiser_equals_direct_unet_recomputation(model, prediction):
    cond = sdxl.encode_prompt(model, 'a photo of a cat')
    assert cond.embeds.shape == (1, 8, 48) and cond.pooled.shape == (1, 32)
    assert cond.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]]
    den = sdxl.SDXLDenoiser(model.denoiser.unet, prediction, model.denoiser.sigmas)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    sigma = 2.5
    ref = _reference_sigmas()
    i = int(np.argmin(np.abs(ref - sigma)))
    s = float(ref[i])
    with torch.no_grad():
        out = model.denoiser.unet(x / np.sqrt(s * s + 1), torch.tensor([i, i]),
                                  encoder_hidden_states=cond.embeds.repeat(2, 1, 1),
                                  added_cond_kwargs=dict(text_embeds=cond.pooled.repeat(2, 1),
                                                         time_ids=cond.time_ids.repeat(2, 1))).sample
        expected = x - s * out if prediction == 'epsilon' else x / (s * s + 1) - s / np.sqrt(s * s + 1) * out
        got = sdxl.BoundDenoiser(den, cond)(x, torch.tensor(sigma))
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, x)


def test_empty_negative_prompt_is_zeros_and_prompts_differ(model):
    neg = sdxl.encode_prompt(model, '', negative=True)
    assert not neg.embeds.any() and not neg.pooled.any()
    a, b = sdxl.encode_prompt(model, 'a cat'), sdxl.encode_prompt(model, 'a dog')
    assert not torch.equal(a.embeds, b.embeds)


def test_default_interval_is_steps_10_to_25():
    from edmguide.sampler.guidance import Interval
    schedule = sdxl.default_options().schedule()
    sigmas = sampling.noise_levels(32, 0.03, 14.61, 3)  # the paper's schedule, built independently
    assert torch.equal(schedule.sigmas, sigmas)
    guidance = sdxl.sdxl_guidance(schedule, 16)
    assert guidance.to_step_indices(sigmas) == ((10, 25, 16.0),)
    assert sdxl.sdxl_guidance(schedule, 16, Interval.of_steps(10, 25)).step_weights(sigmas) == guidance.step_weights(sigmas)
    other = sdxl.default_options(num_steps=40).schedule()  # elsewhere the paper's range is taken literally
    assert sdxl.sdxl_guidance(other, 16).segments == ((0.28, 5.42, 16.0),)


def _latents(model, guidance, seeds=(0, 1), counter=None, **kw):
    cond, uncond = sdxl.encode_prompt(model, 'a red cat'), sdxl.encode_prompt(model, '', negative=True)
    schedule = sdxl.default_options(num_steps=8, **kw).schedule()
    return sdxl.sample_latents(model, cond, uncond, list(seeds), guidance, schedule, counter=counter)


def test_guidance_special_cases_are_bit_identical(model):
    sigmas = sampling.noise_levels(8, 0.03, 14.61, 3)
    plain = _latents(model, None)
    assert torch.equal(_latents(model, 1.0), plain)
    assert torch.equal(_latents(model, GuidanceSchedule.sigma_range(16, 20.0, 30.0)), plain)  # covers no step
    cfg = _latents(model, GuidanceSchedule.constant(16))
    assert not torch.equal(cfg, plain)
    covering = GuidanceSchedule.sigma_range(16, 0.001, 15.0)
    assert covering.to_step_indices(sigmas) == ((0, 7, 16.0),)
    assert torch.equal(_latents(model, covering), cfg)


def test_guide_evaluations_only_inside_interval(model):
    sigmas = sampling.noise_levels(8, 0.03, 14.61, 3)
    schedule = GuidanceSchedule.step_indices(16, 2, 4, sigmas)
    counter = EvalCounter()
    _latents(model, schedule, counter=counter)
    assert (counter.net, counter.gnet) == (15, 6)  # 7 steps x 2 + last step x 1; steps 2..4 guided x 2
    none = EvalCounter()
    _latents(model, GuidanceSchedule.sigma_range(16, 20.0, 30.0), counter=none)
    assert (none.net, none.gnet) == (15, 0)


def test_per_seed_determinism_across_batch_sizes(model):
    together = _latents(model, 3.0, seeds=(5, 6, 7))
    alone = torch.cat([_latents(model, 3.0, seeds=(s,)) for s in (5, 6, 7)])
    # The noise is per seed (bit-identical); the UNet's batched matrix products may round differently
    # for another batch size, so the latents agree to float32 rounding rather than bit for bit.
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    assert not torch.equal(together[0], together[1])


def test_cli_writes_pngs_of_model_size(tiny_sdxl, tmp_path):
    result = invoke(generate_images.main, ['--sdxl', tiny_sdxl, '--prompt', 'a photo of a dog', '--seeds', '0-2',
                                           '--outdir', tmp_path, '--steps', '4', '--batch', '2', '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    names = sorted(os.listdir(tmp_path))
    assert names == ['000000.png', '000001.png', '000002.png']
    image = np.asarray(PIL.Image.open(tmp_path / names[0]))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # 4 steps: 2 evaluations each but the last; the default interval (0.28, 5.42] taken literally.
    levels = sampling.noise_levels(4, 0.03, 14.61, 3).tolist()[:-1]
    guide = sum(2 if i < 3 else 1 for i, t in enumerate(levels) if 0.28 < t <= 5.42)
    assert guide > 0
    assert result.output.count(f'evaluations main = 7, guide = {guide}') == 3


def test_cli_refuses_sdxl_options_in_edm2_mode(tiny_pickles, tmp_path):
    result = invoke(generate_images.main, ['--net', tiny_pickles['cond'], '--prompt', 'a cat', '--outdir', tmp_path])
    assert result.exit_code != 0 and '--prompt' in result.output


@pytest.mark.parametrize('extra, needle', [(['--class', '3'], '--class'), (['--numerics', 'gi'], '--numerics'),
                                           ([], '--prompt')])
def test_cli_sdxl_refuses_edm2_options_and_needs_prompt(tiny_sdxl, tmp_path, extra, needle):
    args = ['--sdxl', tiny_sdxl, '--outdir', tmp_path / 'out'] + (['--prompt', 'a cat'] if extra else []) + extra
    result = invoke(generate_images.main, args)
    assert result.exit_code != 0 and needle in result.output
    assert 'Traceback' not in result.output and not (tmp_path / 'out').exists()


def test_full_sigma_range_is_constant_cfg_and_saving_of_default_interval():
    from edmguide.sampler.guidance import Interval, parse_sigma_range
    schedule = sdxl.default_options().schedule()
    full = sdxl.sdxl_guidance(schedule, 16, Interval.of_sigma(*parse_sigma_range('(0, inf]')))
    assert full.step_weights(schedule.sigmas) == [16.0] * 32
    made = {}
    for name, guidance in (('cfg', full), ('gi', sdxl.sdxl_guidance(schedule, 16))):
        made[name] = sampling.tree_evaluations(sampling.step_keys([(object(), guidance)], schedule))[0]
    # 31 steps x 2 + 1 for the main net; the guide on steps 10..25 only (16 steps, 2 evaluations each).
    assert (made['cfg'].net, made['cfg'].gnet, made['gi'].net, made['gi'].gnet) == (63, 63, 63, 32)


def test_figure_rows_and_cli_grid(tiny_sdxl, tmp_path):
    sigmas = sampling.noise_levels(**sdxl.DEFAULTS)
    fig6 = sdxl.figure_methods('sdxl-fig6')
    assert [g.to_step_indices(sigmas) for _, g in fig6] == [((0, 31, 2.0),), ((0, 31, 16.0),), ((10, 25, 16.0),)]
    hi = [g.to_step_indices(sigmas)[0][:2] for _, g in sdxl.figure_methods('sdxl-fig8-hi')]
    lo = [g.to_step_indices(sigmas)[0][:2] for _, g in sdxl.figure_methods('sdxl-fig8-lo')]
    assert all(stop == 25 for _, stop in hi) and all(start == 10 for start, _ in lo) and (10, 25) in hi and (10, 25) in lo
    result = invoke(generate_images.main, ['--sdxl', tiny_sdxl, '--figs', 'sdxl-fig6', '--prompt', 'a cat',
                                           '--prompt', 'a dog', '--seeds', '0,1', '--outdir', tmp_path])
    assert result.exit_code == 0, result.output
    grid = np.asarray(PIL.Image.open(tmp_path / 'sdxl-fig6.png'))
    assert grid.shape[1] >= 4 * 16 and grid.shape[0] > 3 * 16  # 2 prompts x 2 seeds, 3 labelled rows
    bad = invoke(generate_images.main, ['--sdxl', tiny_sdxl, '--figs', 'fig9', '--prompt', 'a', '--outdir', tmp_path / 'x'])
    assert bad.exit_code != 0 and 'fig9' in bad.output and not (tmp_path / 'x').exists()


def test_module_imports_neither_diffusers_nor_transformers():
    import subprocess
    import sys
    code = ('import sys, generate_images; from edmguide.models import sdxl; from edmguide.jobs import generation; '
            'print([m for m in ("diffusers", "transformers") if m in sys.modules])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == '[]'


#----------------------------------------------------------------------------
# Starting noise (generative-models' HeunEDMSampler vs EDM), the empty negative prompt, loading quietly.

def _first_input(model, monkeypatch, **kw):
    """The state the sampler hands the main net at its first evaluation (the starting latent: no churn)."""
    seen = []
    original = sdxl.BoundDenoiser.__call__

    def spy(self, x, sigma, labels=None):
        if not seen:
            seen.append(x.clone())
        return original(self, x, sigma, labels)
    monkeypatch.setattr(sdxl.BoundDenoiser, '__call__', spy)
    _latents(model, None, seeds=(3, 4), **kw)
    return seen[0]


def _seed_noise(seeds):
    # Per-seed noise as StackedRandomGenerator documents it: torch.randn of one image per seed, its own generator.
    return torch.stack([torch.randn([4, 8, 8], generator=torch.Generator('cpu').manual_seed(s)) for s in seeds])


def test_starting_latent_is_sgm_by_default_and_edm_by_name(model, monkeypatch):
    noise = _seed_noise((3, 4)).double()
    # sigma_0 of the 8-step schedule is 14.61 computed in float32 as (14.61^(1/3))^3: a few float32
    # roundings (the root's, the power's) leave it within 4 ulp (4 * 2^-24 relative) of 14.61, the
    # factor sqrt(1 + s^2) within the same, and the product with the noise adds one more rounding.
    tol = 6 * 2.0 ** -24
    sgm = _first_input(model, monkeypatch)
    np.testing.assert_allclose(sgm.double().numpy(), (noise * np.sqrt(1 + 14.61 ** 2)).numpy(), rtol=tol, atol=0)
    edm = _first_input(model, monkeypatch, init_noise='edm')
    np.testing.assert_allclose(edm.double().numpy(), (noise * 14.61).numpy(), rtol=tol, atol=0)
    # The two differ by sqrt(1 + 1/14.61^2) = 1.00234, far outside that tolerance.
    assert not np.allclose(sgm.numpy(), edm.numpy(), rtol=1e-3, atol=0)
    assert sdxl.DEFAULT_INIT_NOISE == 'sgm'
    with pytest.raises(sdxl.UserError, match='starting noise'):
        sdxl.default_options(init_noise='vp')


def _diffusers_negative(model, negative_prompt):
    """diffusers' own SD-XL pipeline encoding of the negative prompt (the independent reference),
    on the same text encoders and tokenizers."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
                                     tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.denoiser.unet,
                                     scheduler=EulerDiscreteScheduler(), force_zeros_for_empty_prompt=True)
    with torch.no_grad():
        _, neg, _, neg_pooled = pipe.encode_prompt('a red cat', device='cpu', num_images_per_prompt=1,
                                                   do_classifier_free_guidance=True, negative_prompt=negative_prompt)
    return neg, neg_pooled


def test_empty_negative_encode_matches_diffusers_explicit_empty_prompt(model):
    neg, neg_pooled = _diffusers_negative(model, '')
    ours = sdxl.encode_prompt(model, '', negative=True, empty_negative='encode')
    assert neg.abs().sum() > 0  # diffusers encodes an explicit '' (not zeros), so the comparison means something
    torch.testing.assert_close(ours.embeds, neg.float(), rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, neg_pooled.float(), rtol=0, atol=0)
    # The default stays the zeros diffusers uses when no negative prompt is given.
    none, none_pooled = _diffusers_negative(model, None)
    default = sdxl.encode_prompt(model, '', negative=True)
    assert torch.equal(default.embeds, none.float()) and torch.equal(default.pooled, none_pooled.float())
    assert not default.embeds.any()
    with pytest.raises(sdxl.UserError, match='--empty_negative'):
        sdxl.encode_prompt(model, '', negative=True, empty_negative='blank')


def test_cli_sdxl_noise_and_empty_negative_options(tiny_sdxl, tmp_path):
    runs = {}
    for name, extra in (('default', []), ('sgm', ['--sdxl_noise', 'sgm']), ('edm', ['--sdxl_noise', 'edm']),
                        ('encode', ['--empty_negative', 'encode'])):
        out = tmp_path / name
        result = invoke(generate_images.main, ['--sdxl', tiny_sdxl, '--prompt', 'a cat', '--seeds', '0',
                                               '--outdir', out, '--steps', '4', '--device', 'cpu'] + extra)
        assert result.exit_code == 0, result.output
        runs[name] = (out / '000000.png').read_bytes()
    assert runs['default'] == runs['sgm'] != runs['edm']
    assert runs['encode'] != runs['default']
    bad = invoke(generate_images.main, ['--sdxl', tiny_sdxl, '--prompt', 'a', '--sdxl_noise', 'vp',
                                        '--outdir', tmp_path / 'bad'])
    assert bad.exit_code != 0 and '--sdxl_noise' in bad.output and not (tmp_path / 'bad').exists()
    edm2 = invoke(generate_images.main, ['--preset', 'demo', '--sdxl_noise', 'edm', '--outdir', tmp_path / 'demo'])
    assert edm2.exit_code != 0 and '--sdxl_noise' in edm2.output


def test_sdxl_run_prints_no_accelerate_warning(tiny_sdxl, tmp_path):
    import importlib.util
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, 'generate_images.py', '--sdxl', tiny_sdxl, '--prompt', 'a cat',
                           '--seeds', '0', '--steps', '4', '--device', 'cpu', '--outdir', str(tmp_path / 'o')],
                          capture_output=True, text=True, cwd=root, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    assert 'accelerate' not in proc.stderr and 'accelerate' not in proc.stdout
    assert 'Traceback' not in proc.stderr
    if importlib.util.find_spec('accelerate') is None:  # the case the warning came from
        assert not sdxl._accelerate_available()
