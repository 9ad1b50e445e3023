//! Model configuration and the canonical weights of a model directory.
pub mod config;
pub mod weights;

pub use config::{ModelConfig, SpecialTokens};
pub use weights::{Tensor, Weights};
