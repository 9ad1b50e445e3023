//! Seeded random weights with the shapes of an official Whisper size, for `build --synthetic SIZE`.
//!
//! Speed does not depend on weight values, so large models are measured with these. The values
//! still have sane scales (unit-variance activations through every layer, the encoder's real
//! sinusoidal positions) so that fp16 never overflows and the decoder produces ordinary logits.
//!
//! Generation is counter-based (each value is a hash of the seed, the tensor's name and its
//! index), so it runs in parallel and gives the same weights whatever the thread count.
use crate::model::weights::canonical_shapes;
use crate::model::{ModelConfig, SpecialTokens, Tensor, Weights};
use crate::text::special::LANGUAGE_CODES;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// The sizes `synthetic` knows, as `build --synthetic` spells them.
pub const SIZES: [&str; 6] = ["tiny", "base", "small", "medium", "large-v2", "large-v3"];

/// The dimensions of an official multilingual Whisper size.
pub fn config(size: &str) -> Result<ModelConfig> {
    // (state, heads, layers)
    let (n_state, n_head, n_layer) = match size {
        "tiny" => (384, 6, 4),
        "base" => (512, 8, 6),
        "small" => (768, 12, 12),
        "medium" => (1024, 16, 24),
        "large-v2" | "large-v3" => (1280, 20, 32),
        other => bail!("unknown model size {other:?}; expected one of {}", SIZES.join(", ")),
    };
    let (n_mels, n_vocab) = if size == "large-v3" { (128, 51866) } else { (80, 51865) };
    let config = ModelConfig {
        n_mels,
        n_audio_ctx: 1500,
        n_audio_state: n_state,
        n_audio_head: n_head,
        n_audio_layer: n_layer,
        n_vocab,
        n_text_ctx: 448,
        n_text_state: n_state,
        n_text_head: n_head,
        n_text_layer: n_layer,
        multilingual: true,
        special_tokens: multilingual_special_tokens(n_vocab),
        alignment_heads: None,
        source_format: format!("synthetic-{size}"),
    };
    config.validate()?;
    Ok(config)
}

/// The special tokens as openai-whisper's tokenizer lays them out after the 50257 GPT-2 tokens of a
/// multilingual vocabulary: <|endoftext|>, <|startoftranscript|>, one token per language
/// (n_vocab - 51765 - 1 of them: 99, or 100 with large-v3's <|yue|>), <|translate|>,
/// <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>, then 1501
/// timestamps that end the vocabulary.
pub fn multilingual_special_tokens(n_vocab: usize) -> SpecialTokens {
    let n_languages = (n_vocab - 51765 - 1).min(LANGUAGE_CODES.len());
    let eot = 50257u32;
    let sot = eot + 1;
    let languages: Vec<(String, u32)> = LANGUAGE_CODES
        .iter()
        .take(n_languages)
        .enumerate()
        .map(|(i, c)| (c.to_string(), sot + 1 + i as u32))
        .collect();
    let translate = sot + 1 + n_languages as u32;
    SpecialTokens {
        eot,
        sot,
        translate,
        transcribe: translate + 1,
        sot_lm: translate + 2,
        sot_prev: translate + 3,
        no_speech: translate + 4,
        no_timestamps: translate + 5,
        timestamp_begin: translate + 6,
        languages,
    }
}

/// How one canonical tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// Uniform with this standard deviation around `mean`.
    Uniform { mean: f32, std: f32 },
    /// openai-whisper's `sinusoids(length, channels)` (the encoder's positions).
    Sinusoids,
}

fn fill_for(name: &str, shape: &[usize], n_layer: usize) -> Fill {
    let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f32;
    let last = name.rsplit('.').next().unwrap_or("");
    let is_ln = name.contains("_ln.") || name.contains(".ln.") || name.contains("ln_post.");
    if name == "encoder.positional_embedding" {
        Fill::Sinusoids
    } else if is_ln && last == "weight" {
        Fill::Uniform { mean: 1.0, std: 0.05 }
    } else if is_ln
        || last == "bias"
        || name == "decoder.token_embedding.weight"
        || name == "decoder.positional_embedding"
    {
        // LayerNorm shifts, biases and the decoder's embeddings (its logits come out near unit scale).
        Fill::Uniform { mean: 0.0, std: 0.02 }
    } else if name.ends_with(".out.weight") || name.ends_with(".mlp.2.weight") {
        // Projections into the residual stream, scaled down by depth (as GPT-2 does) so the
        // residual stays near unit variance across all layers.
        Fill::Uniform {
            mean: 0.0,
            std: 1.0 / (fan_in * 2.0 * n_layer as f32).sqrt(),
        }
    } else {
        // Linear and conv weights: unit-variance outputs for unit-variance inputs.
        Fill::Uniform {
            mean: 0.0,
            std: 1.0 / fan_in.sqrt(),
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Values of one tensor, generated in parallel chunks.
fn generate(name: &str, shape: &[usize], fill: Fill, seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut data = vec![0f32; n];
    const CHUNK: usize = 1 << 16;
    match fill {
        Fill::Uniform { mean, std } => {
            let key = splitmix64(seed ^ name_hash(name));
            // Uniform on [-a, a] has standard deviation a / sqrt(3).
            let a = std * 3f32.sqrt();
            data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                let base = (c * CHUNK) as u64;
                for (i, v) in chunk.iter_mut().enumerate() {
                    let bits = splitmix64(key.wrapping_add(base + i as u64)) >> 40; // 24 bits
                    let u = bits as f32 * (1.0 / (1u32 << 24) as f32); // [0, 1)
                    *v = mean + a * (2.0 * u - 1.0);
                }
            });
        }
        Fill::Sinusoids => {
            // openai-whisper model.sinusoids: [sin(t * inv) | cos(t * inv)],
            // inv = exp(-ln(10000) / (channels/2 - 1) * arange(channels/2)).
            let channels = shape.get(1).copied().unwrap_or(1);
            let half = channels / 2;
            let step = (10000f64).ln() / (half.max(2) - 1) as f64;
            data.par_chunks_mut(channels.max(1)).enumerate().for_each(|(t, row)| {
                for j in 0..half {
                    let x = t as f64 * (-step * j as f64).exp();
                    row[j] = x.sin() as f32;
                    row[half + j] = x.cos() as f32;
                }
            });
        }
    }
    data
}

/// The config and seeded random canonical weights of `size` (one of [`SIZES`]).
/// large-v2 (1.55 B parameters, 6.2 GB in f32) takes about a second on 16 cores.
pub fn synthetic(size: &str, seed: u64) -> Result<(ModelConfig, Weights)> {
    let config = config(size)?;
    let n_layer = config.n_audio_layer.max(config.n_text_layer);
    let shapes = canonical_shapes(&config);
    // Tensors one after another (each in parallel inside) keeps peak memory at the weights alone.
    let mut map = HashMap::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let fill = fill_for(&name, &shape, n_layer);
        let data = generate(&name, &shape, fill, seed);
        map.insert(name, Tensor::new(shape, data));
    }
    let weights = Weights::from_map(Path::new(&format!("<synthetic {size} seed {seed}>")), map);
    Ok((config, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_match_openai_layout() {
        let v2 = multilingual_special_tokens(51865);
        assert_eq!(
            (v2.eot, v2.sot, v2.translate, v2.transcribe),
            (50257, 50258, 50358, 50359)
        );
        assert_eq!(
            (v2.sot_lm, v2.sot_prev, v2.no_speech, v2.no_timestamps),
            (50360, 50361, 50362, 50363)
        );
        assert_eq!(v2.timestamp_begin, 50364);
        assert_eq!(v2.languages.len(), 99);
        assert_eq!(v2.languages[0], ("en".to_string(), 50259));
        // 1501 timestamps <|0.00|>..<|30.00|> end the vocabulary.
        assert_eq!(v2.timestamp_begin as usize + 1501, 51865);
        let v3 = multilingual_special_tokens(51866);
        assert_eq!(v3.languages.len(), 100);
        assert_eq!(v3.languages[99], ("yue".to_string(), 50358));
        assert_eq!(
            (v3.translate, v3.no_timestamps, v3.timestamp_begin),
            (50359, 50364, 50365)
        );
        assert_eq!(v3.timestamp_begin as usize + 1501, 51866);
    }

    #[test]
    fn fills_have_requested_moments_and_depend_on_seed() {
        let shape = [512, 256];
        let fill = Fill::Uniform { mean: 0.5, std: 0.1 };
        let a = generate("x.weight", &shape, fill, 1);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.5).abs() < 0.002, "mean {mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.002, "std {}", var.sqrt());
        assert_eq!(a, generate("x.weight", &shape, fill, 1));
        assert_ne!(a, generate("x.weight", &shape, fill, 2));
        assert_ne!(a, generate("y.weight", &shape, fill, 1));
    }

    #[test]
    fn sinusoids_match_openai() {
        let s = generate("encoder.positional_embedding", &[1500, 384], Fill::Sinusoids, 0);
        // Position 0: sin 0 = 0 for the first half, cos 0 = 1 for the second.
        assert!(s[..192].iter().all(|&v| v == 0.0) && s[192..384].iter().all(|&v| v == 1.0));
        // Position 7, channel 0 has inv_timescale 1: sin(7).
        assert!((s[7 * 384] - 7f32.sin()).abs() < 1e-6);
        // Last channel of the first half has inv_timescale 1/10000.
        assert!((s[7 * 384 + 191] - (7.0f64 / 10000.0).sin() as f32).abs() < 1e-6);
    }

    #[test]
    fn scales_by_role() {
        assert_eq!(
            fill_for("decoder.blocks.0.attn_ln.weight", &[384], 4),
            Fill::Uniform { mean: 1.0, std: 0.05 }
        );
        assert_eq!(
            fill_for("decoder.ln.bias", &[384], 4),
            Fill::Uniform { mean: 0.0, std: 0.02 }
        );
        assert_eq!(
            fill_for("encoder.ln_post.weight", &[384], 4),
            Fill::Uniform { mean: 1.0, std: 0.05 }
        );
        assert_eq!(
            fill_for("encoder.blocks.1.mlp.0.bias", &[1536], 4),
            Fill::Uniform { mean: 0.0, std: 0.02 }
        );
        assert_eq!(
            fill_for("encoder.conv1.weight", &[384, 80, 3], 4),
            Fill::Uniform {
                mean: 0.0,
                std: 1.0 / 240f32.sqrt()
            }
        );
        assert_eq!(
            fill_for("encoder.blocks.0.attn.query.weight", &[384, 384], 4),
            Fill::Uniform {
                mean: 0.0,
                std: 1.0 / 384f32.sqrt()
            }
        );
        assert_eq!(
            fill_for("decoder.blocks.0.mlp.2.weight", &[384, 1536], 4),
            Fill::Uniform {
                mean: 0.0,
                std: 1.0 / (1536f32 * 8.0).sqrt()
            }
        );
    }
}
