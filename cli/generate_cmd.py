"""``xgen generate RUN --prompt TEXT``: continue a prompt with a trained model (KV cache, SPEC §1 tokenizer)."""
from __future__ import annotations

import click

from cli.common import format_option, own_json, sampling_options, user_errors


@click.command("generate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", required=True, help="Text to continue ('' starts a new document after EOS).")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many new tokens (or at EOS).")
@sampling_options
@click.option("--allow-special", is_flag=True,
              help="Encode special-token strings in the prompt as special tokens (HF-compatible mode, SPEC §1); "
                   "default: data mode, they are plain text.")
@format_option()
@user_errors
@own_json
def generate(run: str, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int,
             allow_special: bool, fmt: str) -> None:
    """Continue --prompt with RUN's latest checkpoint (or a checkpoint folder, or a Hugging Face folder such as
    `xgen export hf` writes): prefill once, then one
    jit'ed decode step per token with a key/value cache; stops at EOS (50256) or --max-new-tokens.

    Example: xgen generate runs/tiny --prompt "The history of" --max-new-tokens 40 --temperature 0.8 --top-p 0.95
    """
    import json
    import time

    from xgen_data import tokenizer as xtok
    from xgen_train.evaluate.generate import generate as run_generate
    from xgen_train.export.hf import load_init

    cfg, params = load_init(run)  # a run, a checkpoint or a Hugging Face folder
    ids = xtok.encode(prompt, hf_compat=allow_special) if prompt else []
    if not ids:
        ids = [xtok.EOS_ID]  # no BOS in XGen (SPEC §1): an empty prompt starts a document after EOS
    t0 = time.perf_counter()
    res = run_generate(params, cfg, ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                       vocab_limit=xtok.VOCAB_SIZE)
    seconds = time.perf_counter() - t0
    body = [t for t in res.tokens if t != xtok.EOS_ID]
    text = xtok.decode(body)
    if fmt == "json":  # prompt and new ids, the new text, the stop reason
        click.echo(json.dumps({"prompt_ids": ids, "new_ids": res.tokens, "text": text, "stop": res.stop,
                               "seconds": round(seconds, 3)}, ensure_ascii=False))
        return
    click.echo(prompt + text)
    click.echo(f"[{len(res.tokens)} new tokens, stop: {res.stop}, {seconds:.1f}s incl. compile]", err=True)
