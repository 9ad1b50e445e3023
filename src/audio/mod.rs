//! Audio front end: decode any supported file to mono 16 kHz f32, and the log-mel spectrogram.
