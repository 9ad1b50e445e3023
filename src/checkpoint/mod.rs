//! Checkpoint readers and the canonical model directory writer (`whisper-trt convert`).
