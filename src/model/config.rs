//! `config.json` of a canonical model directory.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Token ids with a special meaning, as openai-whisper's `Tokenizer` names them.
/// Derived from the tokenizer's vocabulary at convert time (`text::tokenizer::special_tokens`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    pub sot_lm: u32,
    pub sot_prev: u32,
    pub no_speech: u32,
    pub no_timestamps: u32,
    /// The first timestamp token `<|0.00|>`; every id above it is a timestamp too.
    pub timestamp_begin: u32,
    /// Language tokens in openai-whisper's LANGUAGES order, as (code, id).
    pub languages: Vec<(String, u32)>,
}

/// The Whisper dimensions (openai-whisper's `ModelDimensions`) plus what decoding needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_vocab: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    /// True for the multilingual vocabularies (n_vocab >= 51865).
    pub multilingual: bool,
    pub special_tokens: SpecialTokens,
    /// (decoder layer, head) pairs used for word timing, when the source names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment_heads: Option<Vec<[usize; 2]>>,
    /// Where the weights came from: "ctranslate2", "openai-pt" or "huggingface".
    #[serde(default)]
    pub source_format: String,
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read model config", path.display()))?;
        let config: ModelConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a whisper-trt model config", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid model config", path.display()))?;
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Checks the relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let dims = [
            self.n_mels,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_vocab,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
        ];
        if dims.contains(&0) {
            bail!("a dimension is zero: {dims:?}");
        }
        if !self.n_audio_state.is_multiple_of(self.n_audio_head) {
            bail!("n_audio_state {} is not a multiple of n_audio_head {}", self.n_audio_state, self.n_audio_head);
        }
        if !self.n_text_state.is_multiple_of(self.n_text_head) {
            bail!("n_text_state {} is not a multiple of n_text_head {}", self.n_text_state, self.n_text_head);
        }
        let st = &self.special_tokens;
        if st.timestamp_begin as usize >= self.n_vocab || st.eot as usize >= self.n_vocab {
            bail!("special token ids exceed n_vocab {}", self.n_vocab);
        }
        Ok(())
    }

    /// Number of frames the encoder input holds (two per encoder position: conv2 has stride 2).
    pub fn n_frames(&self) -> usize {
        self.n_audio_ctx * 2
    }
}
