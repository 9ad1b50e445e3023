//! Canonical weights: `model.safetensors` of a model directory, named as openai-whisper names
//! its state dict (see README, "Canonical tensor names"). Loaded into f32 for the CPU backend.
use super::config::ModelConfig;
use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
}

/// Every tensor of a canonical model directory.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads a safetensors file and converts every tensor to f32.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(view.dtype(), view.data())
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            tensors.insert(name.to_string(), Tensor::new(view.shape().to_vec(), data));
        }
        Ok(Weights { path: path.to_path_buf(), tensors })
    }

    pub fn from_map(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Weights { path: path.to_path_buf(), tensors }
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor {name}", self.path.display()))?;
        if t.shape != shape {
            bail!("{}: tensor {name} has shape {:?}, expected {:?}", self.path.display(), t.shape, shape);
        }
        Ok(t)
    }

    /// The tensor `name`, to change in place (weight-only quantization's round trip).
    pub fn tensor_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        let path = self.path.display().to_string();
        self.tensors.get_mut(name).ok_or_else(|| anyhow!("{path}: missing tensor {name}"))
    }

    /// Removes and returns the tensor `name`, which must have exactly `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)?;
        Ok(self.tensors.remove(name).expect("checked above"))
    }

    /// Checks that every canonical tensor is present with its shape, and nothing else is.
    pub fn check_canonical(&self, config: &ModelConfig) -> Result<()> {
        let expected = canonical_shapes(config);
        for (name, shape) in &expected {
            self.get(name, shape)?;
        }
        if let Some(extra) = self.tensors.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
            bail!("{}: unexpected tensor {extra}", self.path.display());
        }
        Ok(())
    }
}

/// Converts raw little-endian tensor bytes of a floating dtype to f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    })
}

/// The canonical tensor names and shapes of a model with `config`, in a stable order.
/// Names follow openai-whisper's `Whisper.state_dict()`; attention keys have no bias.
pub fn canonical_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let (a, t) = (c.n_audio_state, c.n_text_state);
    out.push(("encoder.conv1.weight".into(), vec![a, c.n_mels, 3]));
    out.push(("encoder.conv1.bias".into(), vec![a]));
    out.push(("encoder.conv2.weight".into(), vec![a, a, 3]));
    out.push(("encoder.conv2.bias".into(), vec![a]));
    out.push(("encoder.positional_embedding".into(), vec![c.n_audio_ctx, a]));
    for i in 0..c.n_audio_layer {
        block_shapes(&mut out, &format!("encoder.blocks.{i}"), a, false);
    }
    out.push(("encoder.ln_post.weight".into(), vec![a]));
    out.push(("encoder.ln_post.bias".into(), vec![a]));
    out.push(("decoder.token_embedding.weight".into(), vec![c.n_vocab, t]));
    out.push(("decoder.positional_embedding".into(), vec![c.n_text_ctx, t]));
    for i in 0..c.n_text_layer {
        block_shapes(&mut out, &format!("decoder.blocks.{i}"), t, true);
    }
    out.push(("decoder.ln.weight".into(), vec![t]));
    out.push(("decoder.ln.bias".into(), vec![t]));
    out
}

fn block_shapes(out: &mut Vec<(String, Vec<usize>)>, p: &str, n: usize, cross: bool) {
    let attn = |out: &mut Vec<(String, Vec<usize>)>, a: &str| {
        out.push((format!("{p}.{a}.query.weight"), vec![n, n]));
        out.push((format!("{p}.{a}.query.bias"), vec![n]));
        out.push((format!("{p}.{a}.key.weight"), vec![n, n]));
        out.push((format!("{p}.{a}.value.weight"), vec![n, n]));
        out.push((format!("{p}.{a}.value.bias"), vec![n]));
        out.push((format!("{p}.{a}.out.weight"), vec![n, n]));
        out.push((format!("{p}.{a}.out.bias"), vec![n]));
    };
    attn(out, "attn");
    out.push((format!("{p}.attn_ln.weight"), vec![n]));
    out.push((format!("{p}.attn_ln.bias"), vec![n]));
    if cross {
        attn(out, "cross_attn");
        out.push((format!("{p}.cross_attn_ln.weight"), vec![n]));
        out.push((format!("{p}.cross_attn_ln.bias"), vec![n]));
    }
    out.push((format!("{p}.mlp.0.weight"), vec![4 * n, n]));
    out.push((format!("{p}.mlp.0.bias"), vec![4 * n]));
    out.push((format!("{p}.mlp.2.weight"), vec![n, 4 * n]));
    out.push((format!("{p}.mlp.2.bias"), vec![n]));
    out.push((format!("{p}.mlp_ln.weight"), vec![n]));
    out.push((format!("{p}.mlp_ln.bias"), vec![n]));
}
