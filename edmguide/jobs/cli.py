"""Option parsing shared by the command-line scripts (sampler options, guidance options, device).

Only parsing and validation live here; the work is done by library functions. This module imports
nothing heavy (no torch), so that `--help` and option errors answer at once.

One voice: every error a script prints is one `error: <message>` line on stderr, option errors
included (`Command`/`Group` print click's usage errors in that form, and nothing else).
"""

import functools
import sys

import click

from edmguide.util.errors import UserError

NUMERICS_HELP = ("which upstream sampler's arithmetic to reproduce: 'edm2' (float32, as NVlabs/edm2) or "
                 "'gi' (float64, sigma clamped/rounded by the net, as kynkaat/guidance-interval)")
GUIDANCE_SIGMA_HELP = 'Guide only noise levels in "(lo, hi]", e.g. "(0.1886, 1.6086]" (also accepted: lo,hi)'
PICKLE_NOTE = ('Pickles (networks, reference statistics .pkl) contain Python code that runs when they are opened: '
               'open only pickles you trust. .safetensors files made by python -m edmguide.nets.convert hold no code '
               '(README: "Weights without code").')


SAMPLER_FIELDS = ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise')


def parse_guidance_options(interval_text, sigma_text, weight=None, weight_option='--guidance'):
    """(--guidance_interval, --guidance_sigma) strings -> one `guidance.Interval` (every step if
    neither); the guidance weight, if given, is checked with them (`guidance.check_weight`), before any work."""
    from edmguide.sampler.guidance import Interval, check_weight
    if weight is not None:
        check_weight(weight, weight_option)
    return Interval.from_options(interval_text, sigma_text)


# --dit_embedding's choices: `edmguide.models.dit_net.EMBEDDINGS` (spelled out so that --help does not
# import torch; tests/test_dit_generation.py checks that the two agree).
DIT_EMBEDDINGS = ('dit', 'diffusers')


class ClassList(click.ParamType):
    """--class: one non-negative class index (an int), or a comma-separated list of them (a tuple;
    DiT mode takes lists: one class per seed, or sample.py's class list)."""
    name = 'INT[,INT...]'

    def convert(self, value, param, ctx):
        if isinstance(value, (int, tuple)):
            return value
        items = [item.strip() for item in str(value).split(',')]
        if not items or not all(item.isdigit() for item in items):
            self.fail(f'{value!r} is not a class index (an integer >= 0) or a comma-separated list of them', param, ctx)
        return int(items[0]) if len(items) == 1 else tuple(int(item) for item in items)


def verbose_option(help_text):
    """--verbose as a bare flag or with a value: upstream GI declares it `type=bool`, so its command
    lines write `--verbose=True` or `--verbose True`; `--verbose` alone means True."""
    return click.option('--verbose', help=help_text, type=bool, is_flag=False, flag_value=True, default=False,
                        metavar='[BOOL]')


def sampler_options(func):
    """The EDM sampler's options, as in upstream EDM2's generate_images.py, parsed into one
    `schedule.SamplerOptions` (checked as a whole when made) passed to the command as `sampler`
    (mode 'edm2'; the command sets `mode` from its --numerics with `sampler.replace(mode=...)`)."""

    @functools.wraps(func)
    def checked(*args, **kwargs):
        from edmguide.sampler.schedule import SamplerOptions  # imports torch: only once a command runs
        fields = {key: kwargs.pop(key) for key in SAMPLER_FIELDS}
        try:
            kwargs['sampler'] = SamplerOptions(**fields)
        except UserError as exc:
            raise click.UsageError(str(exc)) from None
        return func(*args, **kwargs)

    options = [
        click.option('--steps', 'num_steps', help='Number of sampling steps', type=click.IntRange(min=2), default=32, show_default=True),
        click.option('--sigma_min', help='Lowest noise level', type=click.FloatRange(min=0, min_open=True), default=0.002, show_default=True),
        click.option('--sigma_max', help='Highest noise level', type=click.FloatRange(min=0, min_open=True), default=80, show_default=True),
        click.option('--rho', help='Time step exponent', type=click.FloatRange(min=0, min_open=True), default=7, show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_min', 'S_min', help='Stoch. min noise level', type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_max', 'S_max', help='Stoch. max noise level', type=click.FloatRange(min=0), default=float('inf'), show_default=True),
        click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', type=float, default=1, show_default=True),
    ]
    for option in reversed(options):
        checked = option(checked)
    return checked


def show_click_error(exc):
    """A click option/usage error as this project prints every error: one `error: <message>` line,
    instead of click's usage line, `Try --help` line and message."""
    message = ' '.join(exc.format_message().split())  # click may wrap a message over lines
    click.echo(f'error: {message}', err=True)


class _OneVoice:
    """`main` as click's standalone mode, but option errors print as `error: <message>`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            show_click_error(exc)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo('interrupted', err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


class Command(_OneVoice, click.Command):
    """click.Command whose option errors are `error:` lines (use as `@click.command(cls=Command)`)."""


class Group(_OneVoice, click.Group):
    """click.Group whose option errors are `error:` lines (use as `@click.group(cls=Group)`)."""
