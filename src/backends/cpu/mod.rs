//! The CPU reference backend: the full Whisper encoder and decoder in f32.
