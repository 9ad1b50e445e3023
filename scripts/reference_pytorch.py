#!/usr/bin/env python3
"""PyTorch side of `whisper-trt eval --compare`: the same model directory, the same files, the same
results.jsonl and summary.json format, through Hugging Face transformers.

- Loads a whisper-trt model directory (config.json, model.safetensors with openai-whisper's tensor
  names, tokenizer.json) into `WhisperForConditionalGeneration` (names mapped to transformers'),
  fp16 with SDPA attention on the GPU (fp32 on the CPU, for checking this script).
- Reads the same utterances as `whisper-trt eval --librispeech DIR` (LibriSpeech layout, or folders
  holding trans.txt), sorted by subset then id, with the same --subset and --limit.
- Does what openai-whisper's transcribe(temperature=0, condition_on_previous_text=False,
  without_timestamps=True) does, as whisper-trt does: log-mel of the audio followed by 30 s of
  zeros, 30 s windows cut to the frames holding audio and zero-padded in the mel domain; prompt
  <|startoftranscript|>[<|en|><|transcribe|>]<|notimestamps|>; the non-speech and special tokens
  suppressed, blank and end of text suppressed at the first step; at most n_text_ctx // 2 tokens;
  a window with no-speech probability > 0.6 and average log-probability <= -1 is silence.
  Decoding is transformers' own greedy or beam search (GenerationMixin.generate, windows batched).
  Beam search is transformers' (length penalty 1, early stopping at --beam-size finished beams),
  which ranks finished beams slightly differently from openai-whisper's.
- Normalizes with openai-whisper's own EnglishTextNormalizer (package `whisper_normalizers`: the
  `normalizers` folder of the openai-whisper sdist, which scripts/eval-gpu.sh packs).
- Wall time covers audio decoding, log-mel and decoding after one warm-up batch (CUDA's lazy
  initialisation excluded, as whisper-trt's engine load is); memory is
  torch.cuda.max_memory_allocated / max_memory_reserved, and the largest device memory in use
  (cudaMemGetInfo, the whole GPU, as whisper-trt reports) seen after any batch.

Audio: soundfile (FLAC, WAV), resampled to 16 kHz with torchaudio.functional.resample (or
scipy.signal.resample_poly).

    python3 scripts/reference_pytorch.py --model models/tiny.en --librispeech DIR --output OUT \\
        [--subset test-clean,...] [--limit N] [--beam-size N] [--batch-size 16] [--device cuda|cpu]
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
CHUNK = 30
N_SAMPLES = CHUNK * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP  # 3000
AUDIO_EXTENSIONS = ["flac", "wav", "mp3", "ogg"]
NO_SPEECH_THRESHOLD, LOGPROB_THRESHOLD = 0.6, -1.0


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- dataset (as src/eval/dataset.rs)

def transcript_lines(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.replace("\t", " ").split(" ", 1)
            uid, ref = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if not uid or uid in (".", "..") or "/" in uid or "\\" in uid:
                die(f"{path} line {n}: {uid!r} is not an utterance id")
            out.append((n, uid, ref))
    return out


def index_audio(folder):
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, _, ext = name.rpartition(".")
            ext = ext.lower()
            if not stem or ext not in AUDIO_EXTENSIONS:
                continue
            old = found.get(stem)
            if old is None or AUDIO_EXTENSIONS.index(ext) < AUDIO_EXTENSIONS.index(old.rpartition(".")[2].lower()):
                found[stem] = os.path.join(root, name)
    return found


def discover(root):
    if not os.path.isdir(root):
        die(f"{root}: not a directory")
    utts = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        if "trans.txt" in files:
            subset = os.path.basename(os.path.realpath(dirpath)) or "default"
            audio = index_audio(dirpath)
            path = os.path.join(dirpath, "trans.txt")
            for n, uid, ref in transcript_lines(path):
                if uid not in audio:
                    die(f"{path} line {n}: no audio file named {uid} under {dirpath}")
                utts.append((subset, uid, audio[uid], ref))
            dirs[:] = []  # the folder and everything below it belong to this set
            continue
        for name in files:
            if not name.endswith(".trans.txt"):
                continue
            real = os.path.realpath(os.path.join(dirpath, name))
            chapter_dir = os.path.dirname(real)
            speaker_dir = os.path.dirname(chapter_dir)
            spk, _, chapter = name[: -len(".trans.txt")].partition("-")
            if os.path.basename(chapter_dir) != chapter or os.path.basename(speaker_dir) != spk:
                continue  # not <spk>/<chapter>/<spk>-<chapter>.trans.txt
            subset = os.path.basename(os.path.dirname(speaker_dir))
            for n, uid, ref in transcript_lines(os.path.join(dirpath, name)):
                audio = next((os.path.join(dirpath, f"{uid}.{e}") for e in AUDIO_EXTENSIONS
                              if os.path.isfile(os.path.join(dirpath, f"{uid}.{e}"))), None)
                if audio is None:
                    die(f"{os.path.join(dirpath, name)} line {n}: no audio for {uid}")
                utts.append((subset, uid, audio, ref))
    if not utts:
        die(f"{root}: no transcripts found")
    utts.sort(key=lambda u: (u[0], u[1]))
    return utts


# ---------------------------------------------------------------- audio and log-mel

def load_audio(path):
    import soundfile

    data, sr = soundfile.read(path, dtype="float32", always_2d=True)
    audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if len(audio) == 0:
        raise ValueError(f"{path}: no audio")
    if sr != SAMPLE_RATE:
        try:
            import torchaudio.functional as AF

            audio = AF.resample(audio, sr, SAMPLE_RATE)
        except Exception:  # torchaudio missing or without resample
            from scipy.signal import resample_poly

            g = math.gcd(sr, SAMPLE_RATE)
            audio = torch.from_numpy(resample_poly(audio.numpy(), SAMPLE_RATE // g, sr // g).astype(np.float32))
    return audio


def mel_filters(n_mels, npz):
    if npz:
        with np.load(npz) as f:
            return torch.from_numpy(f[f"mel_{n_mels}"])
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb.T.astype(np.float32))


def log_mel(audio, filters, device):
    """openai-whisper's log_mel_spectrogram(audio, padding=N_SAMPLES)."""
    audio = torch.nn.functional.pad(audio.to(device), (0, N_SAMPLES))
    window = torch.hann_window(N_FFT, device=device)
    stft = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = filters.to(device) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def windows(mel):
    """transcribe()'s windows without timestamps: 30 s each, cut to the frames holding audio."""
    content = mel.shape[-1] - N_FRAMES
    out, seek = [], 0
    while seek < content:
        size = min(N_FRAMES, content - seek)
        seg = mel[:, seek: seek + size]
        out.append(torch.nn.functional.pad(seg, (0, N_FRAMES - seg.shape[-1])))
        seek += size
    return out


# ---------------------------------------------------------------- model

HF_NAMES = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
    "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
    "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
    "decoder.ln.weight": "model.decoder.layer_norm.weight",
    "decoder.ln.bias": "model.decoder.layer_norm.bias",
}
HF_MODULES = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}


def hf_name(name):
    """transformers' name for one of openai-whisper's (the inverse of src/checkpoint/hf.rs)."""
    if name in HF_NAMES:
        return HF_NAMES[name]
    if name.startswith(("encoder.conv1.", "encoder.conv2.")):
        return "model." + name
    side, _, rest = name.partition(".blocks.")
    index, _, rest = rest.partition(".")
    module, _, param = rest.rpartition(".")
    if side not in ("encoder", "decoder") or not index.isdigit() or module not in HF_MODULES:
        raise ValueError(f"unexpected tensor {name}")
    return f"model.{side}.layers.{index}.{HF_MODULES[module]}.{param}"


def load_model(model_dir, device, dtype):
    from safetensors.torch import load_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    if c["n_audio_state"] != c["n_text_state"]:
        die(f"{model_dir}: encoder and decoder widths differ; transformers' Whisper has one d_model")
    st = c["special_tokens"]
    d = c["n_audio_state"]
    cfg = WhisperConfig(
        vocab_size=c["n_vocab"], num_mel_bins=c["n_mels"], d_model=d,
        encoder_layers=c["n_audio_layer"], encoder_attention_heads=c["n_audio_head"],
        decoder_layers=c["n_text_layer"], decoder_attention_heads=c["n_text_head"],
        encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        max_source_positions=c["n_audio_ctx"], max_target_positions=c["n_text_ctx"],
        decoder_start_token_id=st["sot"], eos_token_id=st["eot"], pad_token_id=st["eot"],
        bos_token_id=st["eot"], suppress_tokens=None, begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    model = WhisperForConditionalGeneration(cfg)
    ours = load_file(os.path.join(model_dir, "model.safetensors"))
    sd = {hf_name(k): v for k, v in ours.items()}
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    result = model.load_state_dict(sd, strict=False)
    # Whisper's key projections have no bias: transformers' k_proj has none either.
    missing = [k for k in result.missing_keys if not k.endswith("k_proj.bias")]
    if missing or result.unexpected_keys:
        die(f"{model_dir}: weights do not fit transformers' Whisper: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}")
    model = model.to(device=device, dtype=dtype).eval()
    return model, c


def non_speech_tokens(tok):
    """openai-whisper's Tokenizer.non_speech_tokens (as src/text/tokenizer.rs)."""
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    misc = set("♩♪♫♬♭♮♯")
    result = {enc(" -")[0], enc(" '")[0]}
    for s in symbols + sorted(misc):
        for t in (enc(s), enc(" " + s)):
            if len(t) == 1 or (s in misc and t):
                result.add(t[0])
    return sorted(result)


# ---------------------------------------------------------------- decoding

class Decoder:
    def __init__(self, model, cfg, tok, args, device, dtype):
        from transformers import GenerationConfig

        self.model, self.tok, self.device, self.dtype = model, tok, device, dtype
        st = cfg["special_tokens"]
        self.eot, self.sot, self.no_speech, self.ts_begin = st["eot"], st["sot"], st["no_speech"], st["timestamp_begin"]
        prompt = [st["sot"]]
        if cfg["multilingual"]:
            lang = dict((code, i) for code, i in st["languages"])
            if args.language not in lang:
                die(f"--language {args.language}: not a language of this model")
            prompt += [lang[args.language], st["transcribe"]]
        prompt.append(st["no_timestamps"])
        self.prompt = prompt
        suppress = non_speech_tokens(tok) + [st[k] for k in ("transcribe", "translate", "sot", "sot_prev", "sot_lm", "no_speech")]
        blank = tok.encode(" ", add_special_tokens=False).ids
        self.gen = GenerationConfig(
            max_new_tokens=cfg["n_text_ctx"] // 2,
            do_sample=False,
            num_beams=args.beam_size or 1,
            **({"length_penalty": 1.0, "early_stopping": True} if (args.beam_size or 1) > 1 else {}),
            suppress_tokens=sorted(set(suppress)),
            begin_suppress_tokens=blank + [st["eot"]],
            eos_token_id=st["eot"],
            pad_token_id=st["eot"],
            decoder_start_token_id=st["sot"],
            bos_token_id=st["eot"],
            return_dict_in_generate=True,
            output_scores=True,
        )

    @torch.inference_mode()
    def run(self, mels):
        """Tokens, average log-probability and no-speech probability of each window."""
        from transformers import GenerationMixin

        feats = torch.stack(mels).to(self.device, self.dtype)
        enc = self.model.model.encoder(feats)
        b = feats.shape[0]
        prompt = torch.tensor([self.prompt] * b, device=self.device)
        # <|nospeech|> probability: the logits at <|startoftranscript|>.
        first = self.model(encoder_outputs=enc, decoder_input_ids=prompt).logits[:, 0].float()
        no_speech = first.softmax(-1)[:, self.no_speech].tolist()
        # transformers' generic generate (the Whisper subclass would build its own prompt and rules).
        out = GenerationMixin.generate(self.model, encoder_outputs=enc, decoder_input_ids=prompt,
                                       generation_config=self.gen)
        seqs = out.sequences[:, len(self.prompt):].tolist()
        results = []
        for i, seq in enumerate(seqs):
            n = seq.index(self.eot) if self.eot in seq else len(seq)
            tokens = seq[:n]
            if self.gen.num_beams > 1:
                # Length-normalized sum of log-probabilities, as transformers ranks beams.
                avg = float(out.sequences_scores[i])
            else:
                # Log-probabilities after the suppression rules, as openai-whisper sums them
                # (end of text included, over len(tokens) + 1).
                steps = min(n + 1, len(out.scores))
                lp = sum(float(torch.log_softmax(out.scores[t][i].float(), -1)[seq[t]]) for t in range(steps))
                avg = lp / (len(tokens) + 1)
            results.append((tokens, avg, no_speech[i]))
        return results


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="whisper-trt model directory")
    p.add_argument("--librispeech", required=True, help="dataset root, as for whisper-trt eval")
    p.add_argument("--output", required=True, help="folder for results.jsonl and summary.json")
    p.add_argument("--subset", help="comma-separated subsets")
    p.add_argument("--limit", type=int)
    p.add_argument("--beam-size", type=int)
    p.add_argument("--language", default="en")
    p.add_argument("--batch-size", type=int, default=16, help="30 s windows per generate() call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fp32", action="store_true", help="fp32 weights (default: fp16 on cuda, fp32 on cpu)")
    p.add_argument("--mel-filters", help="openai-whisper's mel_filters.npz (default: transformers' slaney bank)")
    p.add_argument("--normalizers", help="folder holding the whisper_normalizers package")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    args = p.parse_args()
    started = time.time()

    if args.normalizers:
        sys.path.insert(0, args.normalizers)
    try:
        from whisper_normalizers import EnglishTextNormalizer
    except ImportError as e:
        die(f"openai-whisper's normalizers are needed (scripts/eval-gpu.sh packs them): {e}")
    normalizer = EnglishTextNormalizer()
    from tokenizers import Tokenizer
    import transformers

    transformers.logging.set_verbosity_error()

    utts = discover(args.librispeech)
    if args.subset:
        want = [s.strip() for s in args.subset.split(",") if s.strip()]
        have = sorted({u[0] for u in utts})
        for s in want:
            if s not in have:
                die(f"{args.librispeech}: no subset {s!r} here (found: {', '.join(have)})")
        utts = [u for u in utts if u[0] in want]
    if args.limit is not None:
        utts = utts[: args.limit]

    device = torch.device(args.device)
    dtype = torch.float32 if (args.fp32 or device.type == "cpu") else torch.float16
    model, cfg = load_model(args.model, device, dtype)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    decoder = Decoder(model, cfg, tok, args, device, dtype)
    filters = mel_filters(cfg["n_mels"], args.mel_filters)
    os.makedirs(args.output, exist_ok=True)
    results_path = os.path.join(args.output, "results.jsonl")
    out = open(results_path, "w")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def device_used():
        if device.type != "cuda":
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free

    # Utterances go in batches of up to --batch-size windows (an utterance's windows stay together).
    def batches():
        cur, n = [], 0
        for u in utts:
            cur.append(u)
            n += 1  # every clip here is under 30 s; longer ones add windows below
            if n >= args.batch_size:
                yield cur
                cur, n = [], 0
        if cur:
            yield cur

    def transcribe(batch):
        done, mels, owner = [], [], []
        for k, (subset, uid, path, ref) in enumerate(batch):
            try:
                audio = load_audio(path)
            except Exception as e:
                print(f"error: {path}: {e}", file=sys.stderr)
                done.append(None)
                continue
            done.append(len(audio) / SAMPLE_RATE)
            for w in windows(log_mel(audio, filters, device)):
                mels.append(w)
                owner.append(k)
        tokens = [[] for _ in batch]
        for i in range(0, len(mels), args.batch_size):
            for j, (toks, avg, nsp) in enumerate(decoder.run(mels[i: i + args.batch_size])):
                silent = nsp > NO_SPEECH_THRESHOLD and avg <= LOGPROB_THRESHOLD
                if not silent:
                    tokens[owner[i + j]] += toks
        return done, tokens

    all_batches = list(batches())
    for b in all_batches[: args.warmup]:
        transcribe(b)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak_used = device_used()
    records, failures = [], 0
    last = time.perf_counter()
    for batch in all_batches:
        seconds, tokens = transcribe(batch)
        sync()
        now = time.perf_counter()
        share = (now - last) / len(batch)
        last = now
        used = device_used()
        if used is not None:
            peak_used = max(peak_used or 0, used)
        for (subset, uid, path, ref), secs, toks in zip(batch, seconds, tokens):
            if secs is None:
                failures += 1
                continue
            toks = [t for t in toks if t < decoder.ts_begin]
            hyp = tok.decode([t for t in toks if t < decoder.eot], skip_special_tokens=False).strip()
            nref, nhyp = normalizer(ref), normalizer(hyp)
            s, d, ins = align(nref.split(), nhyp.split())
            r = {"id": uid, "subset": subset, "audio": path, "reference": ref, "hypothesis": hyp,
                 "normalized_ref": nref, "normalized_hyp": nhyp, "substitutions": s, "deletions": d,
                 "insertions": ins, "word_edits": s + d + ins, "ref_words": len(nref.split()),
                 "audio_seconds": secs, "tokens": toks, "wall_seconds": share}
            out.write(json.dumps(r) + "\n")
            out.flush()
            records.append(r)
        print(f"{len(records) + failures}/{len(utts)}", file=sys.stderr, flush=True)
    out.close()

    subsets = {}
    for r in records:
        subsets.setdefault(r["subset"], []).append(r)
    summary = {
        "complete": len(records) == len(utts),
        "dataset": args.librispeech,
        "decoding": {"model": os.path.basename(os.path.normpath(args.model)), "beam_size": args.beam_size,
                     "patience": 1.0, "language": args.language if cfg["multilingual"] else None,
                     "task": "transcribe"},
        "system": {"name": f"pytorch-{'fp16' if dtype == torch.float16 else 'fp32'}",
                   "software": f"torch {torch.__version__}, transformers {transformers.__version__}, SDPA attention",
                   "backend": device.type, "model_dir": args.model,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "n/a",
                   "engine": None, "cpu_threads": torch.get_num_threads(), "max_batch": args.batch_size,
                   "warmup_batches": args.warmup},
        "subsets": {k: stats(v) for k, v in sorted(subsets.items())},
        "total": stats(records),
        "failures": failures,
        "peak_gpu_memory_bytes": peak_used,
        "torch_max_memory_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "torch_max_memory_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        "gpu_memory": None,
        "peak_host_memory": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} kB",
        "run_wall_seconds": time.time() - started,
    }
    with open(os.path.join(args.output, "summary.json.tmp"), "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(os.path.join(args.output, "summary.json.tmp"), os.path.join(args.output, "summary.json"))
    print(f"{'subset':<12} {'utts':>6} {'words':>7} {'WER %':>7} {'wall s':>8} {'RTF':>7}")
    for k, s in list(summary["subsets"].items()) + [("total", summary["total"])]:
        print(f"{k:<12} {s['utterances']:>6} {s['ref_words']:>7} {s['wer_percent']:>7.2f} "
              f"{s['wall_seconds']:>8.2f} {s['real_time_factor']:>7.4f}")
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MiB"
    print(f"{summary['system']['name']} on {summary['system']['gpu'] if device.type == 'cuda' else 'cpu'}; "
          f"peak GPU memory {mib(peak_used)} (torch allocated {mib(summary['torch_max_memory_allocated_bytes'])})")
    sys.exit(1 if failures else 0)


def align(r, h):
    """Substitutions, deletions, insertions of one minimal alignment (as src/eval/align.rs)."""
    n, m = len(r), len(h)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        d[i][0] = i
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (r[i - 1] != h[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    s = de = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (r[i - 1] != h[j - 1]):
            s += r[i - 1] != h[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            de, i = de + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return s, de, ins


def stats(rs):
    e = sum(r["word_edits"] for r in rs)
    w = sum(r["ref_words"] for r in rs)
    audio = sum(r["audio_seconds"] for r in rs)
    wall = sum(r["wall_seconds"] for r in rs)
    toks = sum(len(r["tokens"]) for r in rs)
    return {
        "utterances": len(rs), "ref_words": w,
        "substitutions": sum(r["substitutions"] for r in rs), "deletions": sum(r["deletions"] for r in rs),
        "insertions": sum(r["insertions"] for r in rs), "word_errors": e,
        "wer_percent": round(100.0 * e / w, 4) if w else 0.0,
        "audio_seconds": audio, "audio_hours": audio / 3600, "decoded_tokens": toks,
        "wall_seconds": wall, "real_time_factor": wall / audio if audio else 0.0,
        "tokens_per_second": toks / wall if wall else 0.0,
    }


if __name__ == "__main__":
    main()
