#!/usr/bin/env python3
"""PyTorch baseline for `whisper-trt bench`: HF transformers WhisperForConditionalGeneration, fp16,
SDPA attention, randomly initialised weights of an official shape (speed does not depend on the
weight values), on the GPU it runs on. It measures the figures `whisper-trt bench` measures:

1. ceilings: device-to-device copy bandwidth (bytes read + written) and an fp16 matmul rate;
2. the encoder in ms per 30 s window at each batch size;
3. the decoder step in ms at each batch size, at positions 50 onwards (cross K/V cached by HF);
4. a test-clean-shaped workload: each utterance is one 30 s window decoding exactly as many tokens
   as the English tokenizer gives for its transcript (plus the prompt and end of text), through
   `GenerationMixin.generate` with forced lengths (min_new_tokens = max_new_tokens), at batch 1
   and at a larger batch (utterances sorted by length, so a batch decodes to its longest member).

Timing uses CUDA events around each region after warm-up; figures are medians. Everything goes to
--json as well. Run on the GPU machine (PyTorch, transformers); see scripts/bench-gpu.sh.
"""
import argparse
import json
import statistics
import sys
import time

import torch

SIZES = {
    # name: (n_mels, d_model, heads, layers, vocab)
    "tiny": (80, 384, 6, 4, 51865),
    "base": (80, 512, 8, 6, 51865),
    "small": (80, 768, 12, 12, 51865),
    "medium": (80, 1024, 16, 24, 51865),
    "large-v2": (80, 1280, 20, 32, 51865),
    "large-v3": (128, 1280, 20, 32, 51866),
}
SOT, EOT, NO_TIMESTAMPS, TRANSCRIBE, EN = 50258, 50257, 50363, 50359, 50259


def model_of(size):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    mels, d, heads, layers, vocab = SIZES[size]
    if vocab == 51866:  # large-v3 shifts the special tokens by one
        raise SystemExit("bench_pytorch.py: large-v3's token ids are not mapped here; use large-v2")
    cfg = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=mels,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_layers=layers,
        decoder_attention_heads=heads,
        d_model=d,
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WhisperForConditionalGeneration(cfg)
    model = model.half().eval()
    # generate() reads these; a random model has no trained generation config.
    gc = model.generation_config
    gc.forced_decoder_ids = None
    gc.suppress_tokens = None
    gc.begin_suppress_tokens = None
    gc.eos_token_id = EOT
    gc.pad_token_id = EOT
    gc.decoder_start_token_id = SOT
    return model, cfg


def events_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def ceilings():
    n = 1 << 30  # 1 GiB each way
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy_ms = events_ms(lambda: dst.copy_(src), reps=20)
    m = 8192
    a = torch.randn(m, m, dtype=torch.float16, device="cuda")
    b = torch.randn(m, m, dtype=torch.float16, device="cuda")
    mm_ms = events_ms(lambda: torch.matmul(a, b), reps=20)
    del src, dst, a, b
    torch.cuda.empty_cache()
    return {"copy_gb_s": 2 * n / copy_ms / 1e6, "matmul_tflop_s": 2 * m**3 / mm_ms / 1e9}


@torch.inference_mode()
def encoder_ms(model, cfg, batch):
    feats = torch.randn(batch, cfg.num_mel_bins, 3000, dtype=torch.float16, device="cuda")
    enc = model.model.encoder
    return events_ms(lambda: enc(feats), warmup=2, reps=5 if batch > 8 else 10) / batch


@torch.inference_mode()
def decoder_step_ms(model, cfg, batch, position=50, steps=20):
    feats = torch.randn(batch, cfg.num_mel_bins, 3000, dtype=torch.float16, device="cuda")
    enc_out = model.model.encoder(feats)
    prompt = torch.randint(0, 50000, (batch, position), device="cuda")
    times = []
    for trial in range(3):
        out = model(encoder_outputs=enc_out, decoder_input_ids=prompt, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        for _ in range(steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = model(encoder_outputs=enc_out, decoder_input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            b.record()
            b.synchronize()
            if trial > 0:  # the first trial warms up
                times.append(a.elapsed_time(b))
    return statistics.median(times)


def workload_lengths(transcripts, tokenizer_json):
    """New tokens per utterance: the transcript's English tokens plus end of text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    lengths = []
    with open(transcripts) as f:
        for line in f:
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                lengths.append(len(tok.encode(" " + parts[1], add_special_tokens=False).ids) + 1)
    return lengths


@torch.inference_mode()
def run_workload(model, cfg, lengths, batch, prompt):
    """Wall seconds for all `lengths` (sorted, in batches), generate() with forced lengths."""
    from transformers.generation.utils import GenerationMixin

    order = sorted(lengths)
    feats = torch.randn(batch, cfg.num_mel_bins, 3000, dtype=torch.float16, device="cuda")
    # One untimed warm-up call of the same batch (kernel selection, allocator growth).
    ids = torch.tensor([prompt] * batch, device="cuda")
    GenerationMixin.generate(
        model, input_features=feats, decoder_input_ids=ids,
        max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=1,
    )
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        n_new = max(chunk)
        ids = torch.tensor([prompt] * len(chunk), device="cuda")
        out = GenerationMixin.generate(
            model,
            input_features=feats[: len(chunk)],
            decoder_input_ids=ids,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            num_beams=1,
        )
        if out.shape[1] != len(prompt) + n_new:
            raise SystemExit(f"generate gave {out.shape[1] - len(prompt)} new tokens, asked for {n_new}")
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large-v2", choices=SIZES)
    p.add_argument("--batch", default="1,8,32", help="batch sizes for the encoder and decoder figures")
    p.add_argument("--transcripts", help="test-clean.trans.txt for the workload (omit to skip it)")
    p.add_argument("--tokenizer", help="an English tokenizer.json (e.g. models/tiny.en/tokenizer.json)")
    p.add_argument("--workload-batch", type=int, default=32, help="the larger batch of the workload")
    p.add_argument(
        "--batch1-sample",
        type=int,
        default=10,
        help="at batch 1 time every Nth utterance only and scale up (the full set takes about half an hour)",
    )
    p.add_argument("--json", help="write every figure here")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_pytorch.py: error: no CUDA GPU")
    batches = [int(b) for b in a.batch.split(",")]
    res = {
        "system": "pytorch",
        "size": a.size,
        "gpu": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "decoder_position": 50,
    }
    import transformers

    res["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    res["ceilings"] = ceilings()
    model, cfg = model_of(a.size)
    res["encoder_ms_per_window"] = {b: encoder_ms(model, cfg, b) for b in batches}
    res["decoder_step_ms"] = {b: decoder_step_ms(model, cfg, b) for b in batches}
    if a.transcripts:
        if not a.tokenizer:
            sys.exit("bench_pytorch.py: error: --transcripts needs --tokenizer")
        lengths = workload_lengths(a.transcripts, a.tokenizer)
        prompt = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]
        torch.cuda.reset_peak_memory_stats()
        wb = a.workload_batch
        full = run_workload(model, cfg, lengths, wb, prompt)
        sample = lengths[:: a.batch1_sample]
        part = run_workload(model, cfg, sample, 1, prompt)
        audio_s = 5.4 * 3600
        res["workload"] = {
            "workload_batch": wb,
            "batch1_sample_every": a.batch1_sample,
            "utterances": len(lengths),
            "new_tokens": sum(lengths),
            f"batch_{wb}_s": full,
            f"batch_{wb}_rtf": full / audio_s,
            "batch_1_sampled_utterances": len(sample),
            "batch_1_sampled_s": part,
            "batch_1_estimated_s": part * len(lengths) / len(sample),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        }
    print(json.dumps(res, indent=2))
    print(f"\nPyTorch {res['versions']['torch']}, transformers {res['versions']['transformers']}, {res['gpu']}, {a.size} fp16 SDPA")
    c = res["ceilings"]
    print(f"ceilings: copy {c['copy_gb_s']:.0f} GB/s, fp16 matmul {c['matmul_tflop_s']:.0f} TFLOP/s")
    for b in batches:
        print(f"batch {b:>3}: encoder {res['encoder_ms_per_window'][b]:.2f} ms/window, decoder step {res['decoder_step_ms'][b]:.2f} ms")
    if "workload" in res:
        w = res["workload"]
        print(
            f"workload: {w['utterances']} utterances, {w['new_tokens']} tokens: batch {a.workload_batch} {full:.1f} s "
            f"(RTF {w[f'batch_{a.workload_batch}_rtf']:.4f}); batch 1 about {w['batch_1_estimated_s']:.0f} s "
            f"(timed {w['batch_1_sampled_utterances']} utterances: {w['batch_1_sampled_s']:.1f} s); "
            f"peak {w['peak_memory_bytes'] / 2**30:.2f} GiB"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
