"""Evaluation throughput of xgen's lm-eval adapter and HumanEval sampler against the torch references, same
export, same requests, same run.

1. Log-likelihood requests per second: ``XgenLM._loglikelihood_tokens`` (JAX, static length buckets) against
   lm-eval's ``HFLM._loglikelihood_tokens`` (``--model hf``, torch CPU, float32) on the same token requests
   (MMLU-shaped: a context of sample text, a one-token continuation " A".." D", four per question), both with
   the same batch size. Target: ratio >= 2.
2. Sampling tokens per second: :func:`xgen_train.evaluate.sampling.sample_completions` (KV cache, batch of
   ``--batch`` rows of one prompt, temperature 0.2, top-p 0.95) against transformers' ``generate`` with the same
   settings (``do_sample``, same batch, ``min_new_tokens = max_new_tokens`` so both produce the same count).
   Target: ratio >= 2.

Each side runs once to warm up (JAX compiles, torch allocates), then ``--repeat`` rounds alternate the two
sides (so a shared machine's changing load falls on both); the best time of each is reported. The
log-likelihood line also prints how many programs the scorer compiled (one per shape bucket; none in the
timed rounds).

    XGEN_GPT2_BPE=../shared/tokenizer/gpt2.tiktoken python benchmarks/bench_eval.py [--config small] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from xgen_data import tokenizer as xtok  # noqa: E402
from xgen_train.model.config import CONFIGS  # noqa: E402

SHARED = os.environ.get("XGEN_SHARED") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
SAMPLE = os.path.join(SHARED, "corpus", "sample", "nl.jsonl")


def requests(n_questions: int, ctx_tokens: int) -> list[tuple]:
    """``4 * n_questions`` lm-eval token requests ``((ctx, cont), ctx_ids, cont_ids)`` from sample text."""
    texts = [json.loads(line)["text"] for line in open(SAMPLE, encoding="utf-8")]
    rng = np.random.default_rng(0)
    out = []
    for q in range(n_questions):
        ids = xtok.encode(texts[q % len(texts)])[: int(rng.integers(ctx_tokens // 2, ctx_tokens))] or [xtok.EOS_ID]
        ctx = ids + xtok.encode("\nAnswer:")
        for letter in " A", " B", " C", " D":
            out.append((("", letter), ctx, xtok.encode(letter)))
    return out


def best(fns, repeat: int) -> list[tuple[float, object]]:
    """``(best seconds, last result)`` of each function: one warm-up call each, then ``repeat`` alternating rounds."""
    results = [fn() for fn in fns]  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(min(t), r) for t, r in zip(times, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=sorted(c for c in CONFIGS if c != "xgen-7b"))
    ap.add_argument("--questions", type=int, default=64, help="MMLU-shaped questions (4 requests each)")
    ap.add_argument("--ctx", type=int, default=200, help="longest context in tokens")
    ap.add_argument("--batch", type=int, default=16, help="batch size of both sides (requests / sampled rows)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens sampled per row")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run on a 2-layer model (checks it works)")
    args = ap.parse_args()
    if args.smoke:
        args.questions, args.ctx, args.batch, args.new_tokens, args.repeat = 4, 48, 4, 8, 1
    import jax
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from xgen_train.evaluate.lm_adapter import XgenLM, _scorer
    from xgen_train.evaluate.sampling import sample_completions
    from xgen_train.export.hf import export_hf
    from xgen_train.model.model import init_params

    base = CONFIGS["tiny" if args.smoke else args.config]
    cfg = base
    params = jax.tree.map(np.asarray, init_params(cfg, 0))
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(None, os.path.join(tmp, "hf"), params=params, model_config=cfg)
        folder = os.path.join(tmp, "hf")
        reqs = requests(args.questions, args.ctx)
        ours = XgenLM(params, cfg, batch_size=args.batch)
        theirs = HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=args.batch)
        (t_ours, r_ours), (t_hf, r_hf) = best([lambda: ours._loglikelihood_tokens(reqs, disable_tqdm=True),
                                               lambda: theirs._loglikelihood_tokens(reqs, disable_tqdm=True)],
                                              args.repeat)
        delta = max(abs(a[0] - b[0]) for a, b in zip(r_ours, r_hf))
        compiled = _scorer(cfg, "float32")._cache_size()
        print(f"model {args.config if not args.smoke else 'tiny'} ({cfg.n_layers} layers, hidden {cfg.hidden}), "
              f"{jax.default_backend()} / torch {torch.__version__} with {torch.get_num_threads()} threads")
        print(f"loglikelihood: {len(reqs)} requests, batch {args.batch}: xgen {len(reqs) / t_ours:,.1f} req/s, "
              f"lm-eval hf {len(reqs) / t_hf:,.1f} req/s, ratio {t_hf / t_ours:.2f}x (target >= 2); "
              f"max |delta logprob| {delta:.2e}; {compiled} scorer programs compiled")

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        prompt = xtok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
        m = args.new_tokens

        def xgen_sample():
            return sample_completions(params, cfg, prompt, args.batch, m, temperature=0.2, top_p=0.95, seed=0,
                                      batch_size=args.batch, stops=(), eos_id=None)

        def hf_sample():
            with torch.no_grad():
                ids = torch.tensor([prompt] * args.batch)
                return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.2,
                                      top_p=0.95, max_new_tokens=m, min_new_tokens=m, pad_token_id=xtok.EOS_ID)

        (t_x, _), (t_h, _) = best([xgen_sample, hf_sample], args.repeat)
        n_tok = args.batch * m
        print(f"sampling: {args.batch} rows x {m} tokens, T=0.2, top-p 0.95: xgen {n_tok / t_x:,.1f} tok/s, "
              f"transformers generate {n_tok / t_h:,.1f} tok/s, ratio {t_h / t_x:.2f}x (target >= 2)")


if __name__ == "__main__":
    main()
