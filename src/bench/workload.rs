//! The test-clean-shaped workload: every utterance one 30 s window (random mel content), decoding
//! exactly its forced number of tokens, scheduled as the pipeline schedules windows
//! (`Transcriber::transcribe_many`): in input order, `max_batch` windows at a time encoded
//! together (`Backend::encode_batch`) and decoded greedily in lockstep on one session of the
//! engine (`session_many`), the first step feeding the prompts with the logits on the host (as
//! `Decoder::run_many` does, for the no-speech probability), the later steps selecting the argmax
//! on the GPU (`forward_select` with SuppressTokens, and SuppressBlank at the first sampled
//! position), each sequence leaving the session (`retain`) once it has sampled its forced count.
//! The argmax token is fed back whatever it is (the weights are random); only the counts are forced.
use super::counts::Utterance;
use crate::backends::cuda::CudaModel;
use crate::backends::Backend;
use crate::decoding::{greedy, rules, DecoderSession, Select};
use crate::model::ModelConfig;
use crate::text::Tokenizer;
use anyhow::{bail, Result};
use std::time::Instant;

/// LibriSpeech test-clean's audio, 5.4 hours.
pub const TEST_CLEAN_SECONDS: f64 = 5.4 * 3600.0;

#[derive(Clone, Debug)]
pub struct WorkloadResult {
    pub utterances: usize,
    pub max_batch: usize,
    /// Tokens sampled (end of text included), prompts not counted.
    pub sampled_tokens: usize,
    /// Utterances whose count was cut to the decoder's sample_len (n_text_ctx / 2).
    pub clipped: usize,
    /// One-token decoder steps run (each over the sequences still in their session).
    pub steps: usize,
    pub wall_s: f64,
    pub rtf: f64,
    pub tokens_per_s: f64,
    /// The largest `cuMemGetInfo` reading (total - free) after any batch: the whole device,
    /// the CUDA context and other processes included.
    pub peak_gpu_bytes: usize,
}

/// The prompt of an English transcription without timestamps for this model.
pub fn prompt(c: &ModelConfig) -> Result<Vec<u32>> {
    let st = &c.special_tokens;
    let mut p = vec![st.sot];
    if c.multilingual {
        let Some(&(_, en)) = st.languages.iter().find(|(code, _)| code == "en") else {
            bail!("the model has no <|en|> token");
        };
        p.extend([en, st.transcribe]);
    }
    p.push(st.no_timestamps);
    Ok(p)
}

pub fn run(model: &CudaModel, tokenizer: &Tokenizer, utts: &[Utterance], max_batch: usize, mels: &[Vec<f32>]) -> Result<WorkloadResult> {
    let c = model.config();
    let prompt = prompt(c)?;
    let sample_len = c.n_text_ctx / 2;
    let suppress = rules::default_suppress_tokens(&tokenizer.non_speech_tokens()?, &c.special_tokens);
    let blank: Vec<u32> = tokenizer.encode(" ")?.into_iter().chain([c.special_tokens.eot]).collect();
    let max_batch = max_batch.max(1);
    if mels.len() < max_batch.min(utts.len()) {
        bail!("internal: {} mels for batches of {max_batch}", mels.len());
    }
    let gpu = model.gpu();
    let (mut sampled_total, mut clipped, mut steps, mut peak) = (0usize, 0usize, 0usize, 0usize);
    gpu.sync()?;
    let t0 = Instant::now();
    for chunk in utts.chunks(max_batch) {
        let b = chunk.len();
        let want: Vec<usize> = chunk.iter().map(|u| u.sampled.min(sample_len)).collect();
        clipped += chunk.iter().filter(|u| u.sampled > sample_len).count();
        let refs: Vec<&[f32]> = mels[..b].iter().map(|m| m.as_slice()).collect();
        let features = Backend::encode_batch(model, &refs)?;
        let frefs: Vec<_> = features.iter().collect();
        let mut session = model.session_many(&frefs, 1)?;
        // First step: the prompts, logits to the host, the first token picked there.
        let feed: Vec<&[u32]> = vec![prompt.as_slice(); b];
        let logits = session.forward(&feed)?;
        let (v, t) = (c.n_vocab, prompt.len());
        let mut last: Vec<u32> = (0..b)
            .map(|j| {
                let mut l = logits[(j * t + t - 1) * v..(j * t + t) * v].to_vec();
                rules::mask(&mut l, &blank);
                rules::mask(&mut l, &suppress);
                greedy::pick(&l).0
            })
            .collect();
        drop(logits);
        // Live sequences: (index in the chunk, tokens sampled so far).
        let mut live: Vec<(usize, usize)> = (0..b).map(|j| (j, 1)).collect();
        sampled_total += b;
        loop {
            let done: Vec<bool> = live.iter().map(|&(j, n)| n >= want[j]).collect();
            if done.iter().any(|&d| d) {
                let keep: Vec<usize> = (0..live.len()).filter(|&i| !done[i]).collect();
                if keep.is_empty() {
                    break;
                }
                session.retain(&keep)?;
                live = keep.iter().map(|&i| live[i]).collect();
                last = keep.iter().map(|&i| last[i]).collect();
            }
            let toks: Vec<[u32; 1]> = last.iter().map(|&x| [x]).collect();
            let feed: Vec<&[u32]> = toks.iter().map(|x| x.as_slice()).collect();
            let picks = session.forward_select(&feed, &Select { suppress: &suppress, blank: &[], k: 1 })?;
            if picks.len() != live.len() {
                bail!("the engine selected {} tokens for {} sequences", picks.len(), live.len());
            }
            steps += 1;
            for ((_, n), (p, l)) in live.iter_mut().zip(picks.iter().zip(last.iter_mut())) {
                *n += 1;
                *l = p.first().map_or(c.special_tokens.eot, |x| x.0);
            }
            sampled_total += live.len();
        }
        drop(session);
        let (free, total) = gpu.mem_info()?;
        peak = peak.max(total - free);
    }
    gpu.sync()?;
    let wall_s = t0.elapsed().as_secs_f64();
    Ok(WorkloadResult {
        utterances: utts.len(),
        max_batch,
        sampled_tokens: sampled_total,
        clipped,
        steps,
        wall_s,
        rtf: wall_s / TEST_CLEAN_SECONDS,
        tokens_per_s: sampled_total as f64 / wall_s,
        peak_gpu_bytes: peak,
    })
}
