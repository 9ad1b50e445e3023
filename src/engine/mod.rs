//! The GPU engine: what `whisper-trt build` writes and the CUDA backend loads.
//!
//! - [`kernels`]: every `kernels/*.cu`, embedded at compile time.
//! - [`nvrtc`]: kernel sources to cubins for one compute capability (build time only).
//! - [`format`]: the engine file (header, cubins, GEMM tactics, weights).
//! - [`synthetic`]: seeded random weights of an official Whisper size, for benchmarks.
//! - [`builder`]: `whisper-trt build`.
//! - [`calibrate`]: calibration audio and runs for the int8 KV cache.
pub mod builder;
pub mod calibrate;
pub mod format;
pub mod kernels;
pub mod nvrtc;
pub mod synthetic;

pub use format::{BuildOptions, Dtype, Engine, EngineHeader, EngineTensor, GemmTactic, FORMAT_VERSION};
