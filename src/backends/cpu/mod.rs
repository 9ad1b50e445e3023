//! The CPU reference backend: the full Whisper encoder and decoder in f32.
//!
//! A faithful port of openai-whisper's `model.py`: every matrix product goes through the `gemm`
//! crate, convolutions are im2col products over strided views, attention heads run in parallel
//! (rayon), and weights keep torch's `[out][in]` layout, which gemm reads directly as Wᵀ.
mod attention;
mod decoder;
mod encoder;
pub mod ops;

pub use decoder::CpuSession;

use crate::model::config::ModelConfig;
use crate::model::weights::{Tensor, Weights};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// A Whisper model on the CPU, f32.
pub struct CpuModel {
    config: ModelConfig,
    encoder: encoder::Encoder,
    decoder: decoder::Decoder,
}

impl CpuModel {
    /// Takes the canonical weights and the config; every tensor's presence and shape is checked.
    pub fn new(config: ModelConfig, mut weights: Weights) -> Result<Self> {
        config.validate().context("invalid model config")?;
        if config.n_audio_state != config.n_text_state {
            bail!(
                "n_audio_state {} differs from n_text_state {}: cross-attention needs them equal",
                config.n_audio_state,
                config.n_text_state
            );
        }
        weights.check_canonical(&config)?;
        let encoder = encoder::Encoder::load(&mut weights, &config)?;
        let decoder = decoder::Decoder::load(&mut weights, &config)?;
        Ok(CpuModel { config, encoder, decoder })
    }

    /// Loads `<dir>/config.json` and `<dir>/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let weights = Weights::load(&dir.join("model.safetensors"))?;
        Self::new(config, weights).with_context(|| format!("{}: cannot build the CPU model", dir.display()))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `mel`: row-major `[n_mels][2 * n_audio_ctx]` -> audio features `[n_audio_ctx][n_audio_state]`.
    pub fn encode(&self, mel: &[f32]) -> Result<Tensor> {
        let c = &self.config;
        let want = c.n_mels * c.n_frames();
        if mel.len() != want {
            bail!("mel has {} values, expected {} x {} = {want}", mel.len(), c.n_mels, c.n_frames());
        }
        if mel.iter().any(|v| !v.is_finite()) {
            bail!("mel contains NaN or infinite values");
        }
        let data = self.encoder.forward(mel);
        Ok(Tensor::new(vec![c.n_audio_ctx, c.n_audio_state], data))
    }

    /// A decoder session of `n_seq` sequences over `features` (from [`CpuModel::encode`]). The
    /// cross-attention keys and values of every layer are computed once, here; each sequence
    /// keeps its own self-attention KV cache of `n_text_ctx` positions.
    pub fn session(&self, features: &Tensor, n_seq: usize) -> Result<CpuSession<'_>> {
        self.decoder.session(&[features], n_seq)
    }

    /// int8 KV cache (`build --int8-kv`): from now on, self and cross keys and values go through
    /// the int8 round trip with these scales (None: f32 again).
    pub fn set_kv_scales(&mut self, scales: Option<crate::kv_quant::KvScales>) -> Result<()> {
        if let Some(s) = &scales {
            let c = &self.config;
            if s.n_layer != c.n_text_layer || s.n_head != c.n_text_head {
                bail!("int8 KV scales for {} layers x {} heads, the model has {} x {}", s.n_layer, s.n_head, c.n_text_layer, c.n_text_head);
            }
        }
        self.decoder.kv_scales = scales;
        Ok(())
    }

    /// Calibration: records the largest |K| and |V| per (kind, layer, head) of every session
    /// from now on, until [`CpuModel::take_kv_stats`].
    pub fn start_kv_stats(&mut self) {
        let c = &self.config;
        self.decoder.kv_stats = Some(std::sync::Mutex::new(crate::kv_quant::KvStats::new(c.n_text_layer, c.n_text_head)));
    }

    pub fn take_kv_stats(&mut self) -> Option<crate::kv_quant::KvStats> {
        self.decoder.kv_stats.take().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// A decoder session of `features.len() * per` sequences: sequence `s` attends to the audio
    /// features `features[s / per]` (see [`CpuModel::session`]).
    pub fn session_many(&self, features: &[&Tensor], per: usize) -> Result<CpuSession<'_>> {
        self.decoder.session(features, per)
    }
}
