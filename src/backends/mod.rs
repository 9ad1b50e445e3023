//! Compute backends. `cpu` is the f32 reference every other backend is checked against.
pub mod cpu;
pub mod cuda;

use crate::decoding::DecoderSession;
use crate::model::ModelConfig;
use anyhow::Result;

/// What the transcription pipeline needs from a backend.
pub trait Backend {
    /// Encoder output of one window, kept wherever the backend keeps it.
    type Features;
    fn config(&self) -> &ModelConfig;
    /// Short name for messages ("cpu").
    fn name(&self) -> &'static str;
    /// `mel`: row-major `[n_mels][2 * n_audio_ctx]`.
    fn encode(&self, mel: &[f32]) -> Result<Self::Features>;
    /// Device memory in use, for reports (backends with no device of their own say None).
    fn device_memory(&self) -> Option<String> {
        None
    }
    /// Windows the encoder takes at once, where the backend has a limit (the engine's max batch).
    fn max_batch(&self) -> Option<usize> {
        None
    }
    /// Encodes several windows; backends that batch (the GPU) run them together, at most
    /// [`Backend::max_batch`] at once.
    fn encode_batch(&self, mels: &[&[f32]]) -> Result<Vec<Self::Features>> {
        mels.iter().map(|m| self.encode(m)).collect()
    }
    /// Sequences one decoder session holds at most, where the backend has a limit.
    fn max_sequences(&self) -> Option<usize> {
        None
    }
    /// A decoder session of `n_seq` sequences over `features`.
    fn session<'a>(&'a self, features: &'a Self::Features, n_seq: usize) -> Result<Box<dyn DecoderSession + 'a>>;
    /// A decoder session of `features.len() * per` sequences: sequence `s` attends to the audio
    /// of `features[s / per]` (several windows decoded together).
    fn session_many<'a>(&'a self, features: &[&'a Self::Features], per: usize) -> Result<Box<dyn DecoderSession + 'a>>;
}

impl Backend for cpu::CpuModel {
    type Features = crate::model::Tensor;
    fn config(&self) -> &ModelConfig {
        cpu::CpuModel::config(self)
    }
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn encode(&self, mel: &[f32]) -> Result<Self::Features> {
        cpu::CpuModel::encode(self, mel)
    }
    fn session<'a>(&'a self, features: &'a Self::Features, n_seq: usize) -> Result<Box<dyn DecoderSession + 'a>> {
        Ok(Box::new(cpu::CpuModel::session(self, features, n_seq)?))
    }
    fn session_many<'a>(&'a self, features: &[&'a Self::Features], per: usize) -> Result<Box<dyn DecoderSession + 'a>> {
        Ok(Box::new(cpu::CpuModel::session_many(self, features, per)?))
    }
}
