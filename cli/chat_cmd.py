"""``xgen chat RUN``: talk to an instruction-tuned model in XGen's format (thin layer over
:mod:`xgen_train.evaluate.chat`)."""
from __future__ import annotations

import json

import click

from cli.common import format_option, own_json, sampling_options, user_errors
from xgen_data.errors import InputError


@click.command("chat")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompts", multiple=True,
              help="A human turn; repeat for several turns (the history is kept) [default: interactive, one "
                   "turn per line on stdin until an empty line or end of input].")
@click.option("--system", default=None, help="System header before the first turn (SPEC §5) [default: none].")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Stop a reply after this many new tokens (or at EOS / the next `### Human:`).")
@sampling_options
@format_option()
@user_errors
@own_json
def chat(run: str, prompts: tuple[str, ...], system: str | None, max_new_tokens: int, temperature: float,
         top_p: float, seed: int, fmt: str) -> None:
    """Chat with RUN (a run folder, checkpoint or Hugging Face folder) in the '### Human: … ### Assistant:'
    format it was tuned on; each reply stops at EOS or at the next '### Human:'.

    Example: xgen chat runs/sft --prompt "Name three colours." --prompt "And one more?"
    """
    from xgen_train.evaluate import chat as chat_mod  # JAX: imported when a command needs it, as generate does
    from xgen_train.export.hf import load_init

    cfg, params = load_init(run)
    interactive = not prompts
    history: list[tuple[str, str]] = []
    turns = []
    for prompt in (prompts or _stdin_turns()):
        try:
            res = chat_mod.reply(params, cfg, history, prompt, system=system, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, seed=seed + len(history))
        except ValueError as exc:
            raise InputError(f"turn {len(history) + 1}: {exc}") from None
        history.append((prompt, res.text))
        turns.append({"prompt": prompt, "reply": res.text, "stop": res.stop, "new_tokens": len(res.tokens)})
        if fmt == "table":
            click.echo(res.text if interactive else f"### Human: {prompt}\n### Assistant: {res.text}")
            click.echo(f"[{len(res.tokens)} new tokens, stop: {res.stop}]", err=True)
    if fmt == "json":
        click.echo(json.dumps(turns, ensure_ascii=False, indent=1))


def _stdin_turns():
    stdin = click.get_text_stream("stdin")
    while True:
        if stdin.isatty():
            click.echo("### Human: ", nl=False, err=True)
        line = stdin.readline()
        if not line.strip():
            return
        yield line.strip()
