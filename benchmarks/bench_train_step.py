"""Train-step speed: our JAX step against transformers + torch on the same model and batch.

Default (CPU): a small LLaMA (``small``: 4 layers, hidden 256, 8 heads, intermediate 688, vocab 51,200),
batch 8 x 256 tokens. Prints

* the machine's measured JAX float32 matmul FLOP/s (square ``n x n`` products, best of two sizes, measured in
  every round);
* our step (:func:`xgen_train.loop.step.make_train_step` on :func:`xgen_train.model.loss.make_loss_fn`, AdamW +
  clipping, jitted with donation): seconds/step, tokens/s, achieved model FLOP/s and its fraction of the matmul rate;
* the same model (``LlamaForCausalLM``, same shapes, float32) and batch trained with ``torch.optim.AdamW`` +
  ``clip_grad_norm_``: tokens/s, and the ratio ours / torch.

The matmul rate, ours and torch are timed in alternating rounds (medians over rounds) so load from other
processes hits all of them.
``--threads N`` pins the process to N cores (``sched_setaffinity``) and sets torch's thread count to N, so
both use the same cores.

Model FLOPs per token (PaLM, Chowdhery et al. 2022, App. B): ``6 * N_matmul + 12 * n_layers * d * T`` where
``N_matmul`` counts the weights of every matrix product (all decoder projections and the LM head; not the
embedding gather) and the second term is attention's ``QK^T`` and ``PV`` (forward + backward, full ``T x T``).

Accelerator: ``--device gpu --config 1b`` (or ``tpu``) runs a ~1.3B config (hidden 2048, 24 layers, 16 heads,
intermediate 5504, vocab 51,200) in bfloat16 with seq 2048 and reports MFU = model FLOP/s / the chip's peak
(``--peak-flops``, default from :data:`PEAK_FLOPS` by device kind); torch is skipped unless ``--torch``.

Example: python benchmarks/bench_train_step.py --steps 6 --rounds 3
         python benchmarks/bench_train_step.py --device gpu --config 1b --batch 8 --seq 2048
         python benchmarks/bench_train_step.py --smoke   # CI: tiny config, batch 2 x 64, 2 steps, 1 round
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

#: Dense bfloat16 peak FLOP/s per chip (vendor data sheets), matched against ``device.device_kind``.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", help="xgen_train CONFIGS name, or '1b'")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, torch)")
    ap.add_argument("--threads", type=int, default=0, help="pin to this many cores (0: all)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--loss-chunk", type=int, default=512)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--accum-steps", type=int, default=1)
    ap.add_argument("--torch", dest="torch", action="store_true", default=None)
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--peak-flops", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="tiny config, batch 2 x 64, 2 steps, 1 round (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.config, args.batch, args.seq, args.steps, args.rounds = "tiny", 2, 64, 2, 1
    return args


def model_config(name: str):
    from xgen_train.model.config import ModelConfig, get_config

    if name == "1b":
        return ModelConfig(vocab_size=51200, hidden=2048, intermediate=5504, n_layers=24, n_heads=16,
                           max_positions=8192)
    return get_config(name)


def step_flops(cfg, batch: int, seq: int) -> dict:
    """Model FLOPs of one training step (see the module doc) and the LM head's share."""
    d, i, v, n = cfg.hidden, cfg.intermediate, cfg.vocab_size, cfg.n_layers
    tokens = batch * seq
    layers = 6 * n * (4 * d * d + 3 * d * i) * tokens
    head = 6 * v * d * tokens
    attn = 12 * n * d * seq * tokens
    total = layers + head + attn
    return {"total": total, "lm_head_share": head / total, "attention_share": attn / total}


def matmul_flops(jax, jnp, sizes=(1024, 2048), reps: int = 3) -> float:
    """Best measured float32 matmul FLOP/s of ``n x n @ n x n`` (HIGHEST precision) over ``sizes``."""
    best = 0.0
    for n in sizes:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
        f(a, a).block_until_ready()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n ** 3 / statistics.median(times))
    return best


def build_ours(cfg, args):
    import jax
    import jax.numpy as jnp

    from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer
    from xgen_train.loop.step import StepOptions, init_monitor, make_train_step
    from xgen_train.model.loss import make_loss_fn
    from xgen_train.model.model import init_params
    from xgen_train.model.numerics import NumericsOptions

    num = NumericsOptions(precision=args.precision, attention=args.attention, loss_chunk=args.loss_chunk,
                          remat=args.remat, accum_steps=args.accum_steps).resolved()
    opt = make_optimizer(OptimizerConfig(peak_lr=3e-4, warmup_steps=10, total_steps=1000))
    opts = StepOptions(accum_steps=num.accum_steps)
    step = jax.jit(make_train_step(make_loss_fn(cfg, num), opt, opts), donate_argnums=(0, 1, 2))
    params = init_params(cfg, 0)
    state = [params, opt.init(params), init_monitor(opts)]
    rng = jax.random.PRNGKey(1)
    tokens = jax.random.randint(rng, (args.batch, args.seq), 0, cfg.vocab_size, dtype=jnp.int32)

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            state[0], state[1], state[2], m = step(*state, tokens)
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t) / n

    t = time.perf_counter()
    run(1)  # compile
    return run, time.perf_counter() - t, num


def build_torch(cfg, args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.max_positions,
                       rms_norm_eps=cfg.rms_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tcfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / n

    run(1)
    return run


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    os.environ.setdefault("JAX_PLATFORMS", args.device if args.device != "gpu" else "cuda")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import jax
    import jax.numpy as jnp

    cfg = model_config(args.config)
    if args.seq > cfg.max_positions:
        cfg = dataclasses.replace(cfg, max_positions=args.seq)
    use_torch = args.torch if args.torch is not None else args.device == "cpu"
    dev = jax.devices()[0]
    fl = step_flops(cfg, args.batch, args.seq)
    tokens = args.batch * args.seq
    print(f"device {dev.device_kind} ({jax.default_backend()}), cores {len(os.sched_getaffinity(0))}, "
          f"config {args.config} (d={cfg.hidden}, layers={cfg.n_layers}, vocab={cfg.vocab_size}), "
          f"batch {args.batch} x seq {args.seq}; {fl['total'] / 1e9:.1f} GFLOP/step, LM head "
          f"{fl['lm_head_share']:.0%}, attention {fl['attention_share']:.0%}", flush=True)
    cpu = args.device == "cpu"
    ours, compile_s, num = build_ours(cfg, args)
    print(f"ours: compiled in {compile_s:.1f}s; numerics {json.dumps(num.to_dict())}", flush=True)
    theirs = build_torch(cfg, args) if use_torch else None
    t_ours, t_torch, mms = [], [], []
    for r in range(args.rounds):  # matmul rate, ours, torch in turn: load from other processes hits all three
        if cpu:
            mms.append(matmul_flops(jax, jnp))
        t_ours.append(ours(args.steps))
        if theirs is not None:
            t_torch.append(theirs(args.steps))
        print(f"round {r}: " + (f"matmul {mms[-1] / 1e9:.1f} GFLOP/s, " if cpu else "") + f"ours {t_ours[-1]:.3f} s/step"
              + (f", torch {t_torch[-1]:.3f} s/step" if t_torch else ""), flush=True)
    so = statistics.median(t_ours)
    mm = statistics.median(mms) if mms else None
    res = {"config": args.config, "device": dev.device_kind, "batch": args.batch, "seq": args.seq,
           "numerics": num.to_dict(), "step_flops": fl["total"], "lm_head_share": fl["lm_head_share"],
           "ours_s_per_step": so, "ours_tokens_per_s": tokens / so, "ours_flops_per_s": fl["total"] / so,
           "matmul_flops_per_s": mm}
    print(f"ours: {so:.3f} s/step, {tokens / so:,.0f} tokens/s, {fl['total'] / so / 1e9:.1f} GFLOP/s", flush=True)
    if mm:
        res["fraction_of_matmul"] = statistics.median(fl["total"] / t / m for t, m in zip(t_ours, mms))
        print(f"measured JAX float32 matmul {mm / 1e9:.1f} GFLOP/s; ours / matmul FLOP/s (median of rounds): "
              f"{res['fraction_of_matmul']:.0%} (target >= 60%)")
    if t_torch:
        st = statistics.median(t_torch)
        res.update(torch_s_per_step=st, torch_tokens_per_s=tokens / st, ratio_vs_torch=st / so)
        print(f"torch: {st:.3f} s/step, {tokens / st:,.0f} tokens/s; ours / torch = {st / so:.2f}x (target >= 2x)")
    if args.device != "cpu":
        peak = args.peak_flops or next((v for k, v in PEAK_FLOPS.items() if k.lower() in dev.device_kind.lower()), None)
        if peak:
            res["mfu"] = fl["total"] / so / peak
            print(f"MFU {res['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s peak ({dev.device_kind})")
        else:
            print(f"unknown peak for {dev.device_kind!r}: pass --peak-flops")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
