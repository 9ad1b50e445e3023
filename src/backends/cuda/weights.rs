//! The engine's tensors on the GPU: one allocation, every tensor at a 256-byte aligned offset,
//! and typed handles (raw addresses) per layer for the encoder and decoder.
use super::context::{DeviceBuffer, Gpu};
use super::layout::{block, scale_name};
use crate::engine::{Dtype, EngineTensor};
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUdeviceptr;
use std::collections::HashMap;

const ALIGN: usize = 256;

pub struct DeviceWeights {
    buf: DeviceBuffer,
    /// name -> (byte offset, dtype, shape)
    index: HashMap<String, (usize, Dtype, Vec<usize>)>,
}

impl DeviceWeights {
    pub fn upload(gpu: &Gpu, tensors: &[EngineTensor]) -> Result<Self> {
        let mut index = HashMap::with_capacity(tensors.len());
        let mut total = 0usize;
        for t in tensors {
            let expected = t.shape.iter().product::<usize>() * t.dtype.size();
            if t.data.len() != expected {
                bail!("engine tensor {} has {} bytes, shape {:?} needs {expected}", t.name, t.data.len(), t.shape);
            }
            index.insert(t.name.clone(), (total, t.dtype, t.shape.clone()));
            total = (total + t.data.len()).div_ceil(ALIGN) * ALIGN;
        }
        let buf = gpu.alloc(total)?;
        for t in tensors {
            gpu.copy_to(&buf, index[&t.name].0, &t.data)?;
        }
        Ok(DeviceWeights { buf, index })
    }

    /// Address of tensor `name`, which must have `dtype` and `shape`.
    pub fn get(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<CUdeviceptr> {
        let (off, dt, sh) = self.index.get(name).ok_or_else(|| anyhow!("the engine has no tensor {name}; rebuild it"))?;
        if *dt != dtype || sh != shape {
            bail!("engine tensor {name} is {dt:?} {sh:?}, expected {dtype:?} {shape:?}; rebuild the engine");
        }
        Ok(self.buf.ptr() + *off as u64)
    }

    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }
}

/// A linear layer: weight `[n_out][n_in]` and its bias. The weight is fp16, or int8 with one
/// fp16 scale per output row at `s` (weight-only int8 engines); `s` is 0 for fp16.
#[derive(Clone, Copy)]
pub struct Lin {
    pub w: CUdeviceptr,
    pub b: CUdeviceptr,
    pub s: CUdeviceptr,
}

/// LayerNorm: f32 gamma and beta.
#[derive(Clone, Copy)]
pub struct Ln {
    pub g: CUdeviceptr,
    pub b: CUdeviceptr,
}

/// Self-attention and MLP of one residual block.
pub struct Block {
    pub attn_ln: Ln,
    pub qkv: Lin,
    pub out: Lin,
    pub mlp_ln: Ln,
    pub fc1: Lin,
    pub fc2: Lin,
}

pub struct DecoderBlock {
    pub base: Block,
    pub cross_ln: Ln,
    pub cross_q: Lin,
    pub cross_out: Lin,
}

pub struct EncoderWeights {
    pub conv1: Lin,
    pub conv2: Lin,
    pub pos: CUdeviceptr,
    pub blocks: Vec<Block>,
    pub ln_post: Ln,
}

pub struct DecoderWeights {
    pub tok_emb: CUdeviceptr,
    /// The token embedding's row scales when it is int8, else 0 (see [`Lin`]).
    pub tok_scale: CUdeviceptr,
    pub pos: CUdeviceptr,
    pub blocks: Vec<DecoderBlock>,
    pub cross_kv: Lin,
    pub ln: Ln,
}

impl DeviceWeights {
    fn ln(&self, name: &str, n: usize) -> Result<Ln> {
        Ok(Ln { g: self.get(&format!("{name}.g"), Dtype::F32, &[n])?, b: self.get(&format!("{name}.b"), Dtype::F32, &[n])? })
    }

    fn lin(&self, name: &str, n_in: usize, n_out: usize, bias: Dtype) -> Result<Lin> {
        let (w, s) = self.weight(&format!("{name}.w"), n_out, n_in)?;
        Ok(Lin { w, b: self.get(&format!("{name}.b"), bias, &[n_out])?, s })
    }

    /// A 2-D weight that may be quantized: (address, row scales' address or 0 for fp16).
    fn weight(&self, name: &str, rows: usize, cols: usize) -> Result<(CUdeviceptr, CUdeviceptr)> {
        match self.index.get(name) {
            Some((_, Dtype::I8, _)) => {
                Ok((self.get(name, Dtype::I8, &[rows, cols])?, self.get(&scale_name(name), Dtype::F16, &[rows])?))
            }
            _ => Ok((self.get(name, Dtype::F16, &[rows, cols])?, 0)),
        }
    }

    fn block(&self, p: &str, n: usize) -> Result<Block> {
        Ok(Block {
            attn_ln: self.ln(&block(p, "attn_ln"), n)?,
            qkv: self.lin(&block(p, "qkv"), n, 3 * n, Dtype::F16)?,
            out: self.lin(&block(p, "out"), n, n, Dtype::F32)?,
            mlp_ln: self.ln(&block(p, "mlp_ln"), n)?,
            fc1: self.lin(&block(p, "fc1"), n, 4 * n, Dtype::F16)?,
            fc2: self.lin(&block(p, "fc2"), 4 * n, n, Dtype::F32)?,
        })
    }

    pub fn encoder(&self, c: &ModelConfig) -> Result<EncoderWeights> {
        let n = c.n_audio_state;
        Ok(EncoderWeights {
            conv1: self.lin("enc.conv1", 3 * c.n_mels, n, Dtype::F16)?,
            conv2: self.lin("enc.conv2", 3 * n, n, Dtype::F32)?,
            pos: self.get("enc.pos", Dtype::F16, &[c.n_audio_ctx, n])?,
            blocks: (0..c.n_audio_layer).map(|i| self.block(&format!("enc.{i}"), n)).collect::<Result<_>>()?,
            ln_post: self.ln("enc.ln_post", n)?,
        })
    }

    pub fn decoder(&self, c: &ModelConfig) -> Result<DecoderWeights> {
        let n = c.n_text_state;
        let blocks = (0..c.n_text_layer)
            .map(|i| {
                let p = format!("dec.{i}");
                Ok(DecoderBlock {
                    base: self.block(&p, n)?,
                    cross_ln: self.ln(&block(&p, "cross_ln"), n)?,
                    cross_q: self.lin(&block(&p, "cross_q"), n, n, Dtype::F16)?,
                    cross_out: self.lin(&block(&p, "cross_out"), n, n, Dtype::F32)?,
                })
            })
            .collect::<Result<_>>()?;
        let (tok_emb, tok_scale) = self.weight("dec.tok_emb", c.n_vocab, n)?;
        Ok(DecoderWeights {
            tok_emb,
            tok_scale,
            pos: self.get("dec.pos", Dtype::F16, &[c.n_text_ctx, n])?,
            blocks,
            cross_kv: self.lin("dec.cross_kv", n, c.n_text_layer * 2 * n, Dtype::F16)?,
            ln: self.ln("dec.ln", n)?,
        })
    }
}
