"""The lean decode step (stormvl.fast_decode) against transformers' forward: equal logits, and
the time of one token step, for random Llama-family LLMs of a few sizes, on CPU or CUDA.

    python benchmarks/decode_step.py [--device cpu|cuda] [--dtype float32|bfloat16] [--steps 50] [--threads 1]

Sizes: the embedded model's LLM (Qwen2, 3 layers of 128, 75 words), SmolLM2-135M's shape (Llama, 30
layers of 576, 9 heads over 3 KV heads) and a 1B-class Llama (16 layers of 2048, 32 over 8). Each row: the
largest logit difference over the steps (against the model's forward, fed the same tokens) and the
median step time of each path, taken in alternating blocks so drift hits both alike.
"""

import argparse
import statistics
import time

import torch

SIZES = {  # architecture, vocabulary, shape
    "embedded (qwen2 3x128, vocab 75)": ("qwen2", 75, dict(hidden_size=128, intermediate_size=512,
                                                           num_hidden_layers=3, num_attention_heads=4,
                                                           num_key_value_heads=4)),
    "SmolLM2-135M shape (llama 30x576)": ("llama", 49152, dict(hidden_size=576, intermediate_size=1536,
                                                                num_hidden_layers=30, num_attention_heads=9,
                                                                num_key_value_heads=3)),
    "1B shape (llama 16x2048, vocab 32000)": ("llama", 32000, dict(hidden_size=2048, intermediate_size=8192,
                                                                    num_hidden_layers=16, num_attention_heads=32,
                                                                    num_key_value_heads=8)),
}  # fmt: skip


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def measure(arch, vocab, kw, device, dtype, steps, prompt=512):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from stormvl.fast_decode import FastSteps, supported
    from stormvl.generation import _forward_args

    cfg_cls, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(0)
    lm = cls(cfg_cls(vocab_size=vocab, max_position_embeddings=4096, **kw)).to(device, dtype).eval()
    assert supported(lm)
    name = _forward_args(type(lm))[0]
    ids = torch.randint(0, vocab, (1, prompt), device=device)
    tokens = torch.randint(0, vocab, (steps, 1), device=device)

    def prefill():
        out = lm(input_ids=ids, use_cache=True, logits_to_keep=1)
        return out[name]

    def reference(cache, n):
        logits = []
        for i in range(n):
            out = lm(input_ids=tokens[i][:, None], position_ids=torch.tensor([[prompt + i]], device=device),
                     use_cache=True, **{name: cache})  # fmt: skip
            cache = out[name]
            logits.append(out.logits[:, -1])
        return logits

    def lean(cache, n):
        fast = FastSteps(lm, cache, None, prompt + n)
        return [fast.step(tokens[i], torch.tensor([[prompt + i]], device=device)) for i in range(n)]

    ref, new = reference(prefill(), steps), lean(prefill(), steps)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, new))
    scale = max(float(a.float().abs().max()) for a in ref)
    times = {"transformers": [], "lean": []}
    for _ in range(5):
        for label, run in (("transformers", reference), ("lean", lean)):
            cache = prefill()
            sync(device)
            t = time.perf_counter()
            run(cache, steps)
            sync(device)
            times[label].append((time.perf_counter() - t) / steps * 1e3)
    return diff, scale, {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (decoding runs steps on one)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"{name}, {a.dtype}, torch {torch.__version__}, a 512-token prompt then {a.steps} steps")
    print("| model | max logit difference (of max logit) | transformers ms/step | lean ms/step | speed-up |")
    print("|---|---|---|---|---|")
    for label in a.sizes:
        diff, scale, t = measure(*SIZES[label], a.device, dtype, a.steps)
        print(f"| {label} | {diff:.2e} ({scale:.1f}) | {t['transformers']:.2f} | {t['lean']:.2f} "
              f"| {t['transformers'] / t['lean']:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
