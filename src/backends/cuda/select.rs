//! The decoding rules' masks and greedy/beam selection on the GPU: a step copies token ids and
//! their log-probabilities to the host instead of the whole vocabulary's logits.
use super::context::{DeviceBuffer, Gpu};
use super::kernels::TOPK_MAX;
use super::CudaModel;
use crate::decoding::Select;
use anyhow::{anyhow, bail, Result};
use std::cell::{Cell, RefCell};

/// Mask bits of `topk_logprobs` (logits.cu).
const SUPPRESS: u8 = 1;
const BLANK: u8 = 2;

/// Device memory of the selection, allocated once with the model.
pub struct SelectBuffers {
    /// u8 `[n_vocab]`: bit 0 SuppressTokens, bit 1 SuppressBlank.
    mask: DeviceBuffer,
    /// u32 `[max_seqs][TOPK_MAX][2]`: (token id, log-probability bits).
    out: DeviceBuffer,
    /// The (suppress, blank) token lists `mask` holds now (they are fixed per decoder, so the
    /// mask is uploaded once, not every step).
    uploaded: RefCell<Option<(Vec<u32>, Vec<u32>)>>,
    n_vocab: usize,
    max_rows: usize,
    /// Selection on the GPU (the default) or on the host from copied logits:
    /// `WHISPER_TRT_DEVICE_SELECT=0` or [`CudaModel::set_device_select`].
    enabled: Cell<bool>,
}

impl SelectBuffers {
    pub fn new(gpu: &Gpu, n_vocab: usize, max_rows: usize) -> Result<Self> {
        Ok(SelectBuffers {
            mask: gpu.alloc(n_vocab)?,
            out: gpu.alloc(max_rows * TOPK_MAX * 8)?,
            uploaded: RefCell::new(None),
            n_vocab,
            max_rows,
            enabled: Cell::new(std::env::var("WHISPER_TRT_DEVICE_SELECT").map_or(true, |v| v != "0")),
        })
    }
}

/// Whether [`CudaModel::select_rows`] can make this selection (else the host does).
pub fn fits(select: &Select) -> bool {
    (1..=TOPK_MAX).contains(&select.k)
}

impl CudaModel {
    /// Decoding selects tokens on the GPU (the default) or on the host from the whole logits.
    pub fn set_device_select(&self, on: bool) {
        self.select.enabled.set(on);
    }

    pub fn device_select(&self) -> bool {
        self.select.enabled.get()
    }

    /// The GPU selection over logits given from the host (`[rows][n_vocab]`, rows at most the
    /// engine's sequences): for checking the kernel against [`Select::pick`].
    pub fn select_host_logits(&self, logits: &[f32], select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
        let v = self.select.n_vocab;
        if logits.is_empty() || !logits.len().is_multiple_of(v) {
            bail!("{} logits are not whole rows of {v}", logits.len());
        }
        let buf = self.gpu.upload(logits)?;
        self.select_rows(buf.ptr(), logits.len() / v, select)
    }

    /// The selection of [`crate::decoding::DecoderSession::forward_select`] over `rows` rows of
    /// f32 logits at `logits` (one row per sequence).
    pub(super) fn select_rows(&self, logits: u64, rows: usize, select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
        let b = &self.select;
        if rows > b.max_rows || !fits(select) {
            return Err(anyhow!("internal: a selection of {rows} rows, top {} does not fit the GPU's buffers", select.k));
        }
        {
            let mut up = b.uploaded.try_borrow_mut().map_err(|_| anyhow!("internal: selection mask in use"))?;
            let same = up.as_ref().is_some_and(|(s, bl)| s == select.suppress && bl == select.blank);
            if !same {
                let mut mask = vec![0u8; b.n_vocab];
                for (ids, bit) in [(select.suppress, SUPPRESS), (select.blank, BLANK)] {
                    for &t in ids {
                        if let Some(m) = mask.get_mut(t as usize) {
                            *m |= bit;
                        }
                    }
                }
                self.gpu.copy_to(&b.mask, 0, &mask)?;
                *up = Some((select.suppress.to_vec(), select.blank.to_vec()));
            }
        }
        let bits = if select.blank.is_empty() { SUPPRESS } else { SUPPRESS | BLANK };
        let k = select.k;
        self.kernels.topk_logprobs(logits, b.mask.ptr(), bits, rows, b.n_vocab, k, b.out.ptr())?;
        let mut host = vec![0u32; rows * k * 2];
        self.gpu.copy_from(b.out.ptr(), &mut host)?;
        Ok(host.chunks_exact(k * 2).map(|r| r.chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect()).collect())
    }
}
