//! Checkpoint readers and the canonical model directory writer (`whisper-trt convert`).
//!
//! Three source formats are read into one in-memory [`Checkpoint`] (canonical tensor names,
//! stored dtype kept), which [`writer`] validates and writes as `model.safetensors` +
//! `config.json` + `tokenizer.json`:
//! - [`ct2`]: CTranslate2 Whisper directories (faster-whisper layout, `model.bin`).
//! - [`pt`]: OpenAI `.pt` files (`torch.save` zip), read with a restricted unpickler ([`pickle`]).
//! - [`hf`]: Hugging Face transformers directories (`model.safetensors` + `config.json`).
pub mod ct2;
pub mod hf;
pub mod pickle;
pub mod pt;
pub mod writer;

use crate::model::config::ModelConfig;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One tensor as stored in the source: little-endian bytes of `dtype`, row-major `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    /// The tensor's name in the source checkpoint (for error messages).
    pub source_name: String,
}

impl RawTensor {
    /// Checks that `data` holds exactly `shape` elements of `dtype`.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>, source_name: &str) -> Result<Self> {
        if !dtype.bitsize().is_multiple_of(8) || dtype.bitsize() == 0 {
            bail!("tensor {source_name}: unsupported dtype {dtype:?}");
        }
        let expected = shape
            .iter()
            .try_fold(elem_size(dtype), |acc, &d| acc.checked_mul(d))
            .with_context(|| format!("tensor {source_name}: shape {shape:?} overflows"))?;
        if data.len() != expected {
            bail!(
                "tensor {source_name}: {} bytes for shape {shape:?} of {dtype:?}, expected {expected}",
                data.len()
            );
        }
        Ok(RawTensor {
            dtype,
            shape,
            data,
            source_name: source_name.to_string(),
        })
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Bytes per element of a whole-byte dtype.
pub(crate) fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// The Whisper dimensions (openai-whisper's `ModelDimensions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dims {
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
}

/// A checkpoint read into canonical tensor names (openai-whisper's state_dict names).
#[derive(Debug)]
pub struct Checkpoint {
    /// `source_format` of config.json: "ctranslate2", "openai-pt" or "huggingface".
    pub format: &'static str,
    /// The file the tensors came from (named in validation errors).
    pub weights_file: PathBuf,
    pub dims: Dims,
    pub alignment_heads: Option<Vec<[usize; 2]>>,
    pub tensors: BTreeMap<String, RawTensor>,
    /// A tokenizer.json that ships with the checkpoint, if any.
    pub tokenizer: Option<PathBuf>,
}

/// The source formats `convert` understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    CTranslate2,
    OpenAiPt,
    HuggingFace,
}

/// Detects the format of `input` (a CTranslate2 dir, an OpenAI .pt file, or a HF transformers dir),
/// converts it into `output` (model.safetensors + config.json + tokenizer.json) and returns the config.
pub fn convert(input: &Path, output: &Path, tokenizer: Option<&Path>) -> Result<ModelConfig> {
    convert_with_models_dir(input, output, tokenizer, &crate::paths::models_dir())
}

/// [`convert`] with the directory holding installed vocabularies (`vocab/english`,
/// `vocab/multilingual`) given explicitly instead of read from `$WHISPER_TRT_MODELS`.
pub fn convert_with_models_dir(
    input: &Path,
    output: &Path,
    tokenizer: Option<&Path>,
    models_dir: &Path,
) -> Result<ModelConfig> {
    let checkpoint = read(input)?;
    let tokenizer_file = find_tokenizer(&checkpoint, input, tokenizer, models_dir)?;
    writer::write(&checkpoint, &tokenizer_file, output)
}

/// Reads any supported checkpoint.
pub fn read(input: &Path) -> Result<Checkpoint> {
    match detect(input)? {
        Format::CTranslate2 => ct2::read(ct2_dir(input)),
        Format::OpenAiPt => pt::read(input),
        Format::HuggingFace => hf::read(hf_dir(input)),
    }
}

fn ct2_dir(input: &Path) -> &Path {
    if input.is_file() {
        input.parent().unwrap_or(Path::new("."))
    } else {
        input
    }
}

fn hf_dir(input: &Path) -> &Path {
    ct2_dir(input)
}

/// Tells the format of `input` from what it contains (not from its name).
pub fn detect(input: &Path) -> Result<Format> {
    let meta = std::fs::metadata(input).map_err(|e| anyhow!("{}: cannot read: {e}", input.display()))?;
    if meta.is_dir() {
        if input.join("model.bin").is_file() {
            return Ok(Format::CTranslate2);
        }
        let has_st = input.join("model.safetensors").is_file() || input.join("model.safetensors.index.json").is_file();
        if has_st && input.join("config.json").is_file() {
            if ModelConfig::load(&input.join("config.json")).is_ok() {
                bail!(
                    "{}: already a whisper-trt model directory (nothing to convert)",
                    input.display()
                );
            }
            return Ok(Format::HuggingFace);
        }
        bail!(
            "{}: not a Whisper checkpoint: expected model.bin (CTranslate2), model.safetensors + \
             config.json (Hugging Face) or an OpenAI .pt file",
            input.display()
        );
    }
    let mut head = [0u8; 4];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(input).map_err(|e| anyhow!("{}: cannot open: {e}", input.display()))?;
        f.read(&mut head)
            .map_err(|e| anyhow!("{}: cannot read: {e}", input.display()))?
    };
    let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if n == 4 && head == *b"PK\x03\x04" {
        return Ok(Format::OpenAiPt);
    }
    if name == "model.bin" {
        return Ok(Format::CTranslate2);
    }
    if name.ends_with(".safetensors") {
        return Ok(Format::HuggingFace);
    }
    if n >= 2 && head[0] == 0x80 && head[1] <= 5 {
        bail!(
            "{}: a legacy (pre-zip) torch.save file; only the zip format (PyTorch >= 1.6) is supported",
            input.display()
        );
    }
    bail!(
        "{}: not a Whisper checkpoint: expected a CTranslate2 or Hugging Face directory, or an OpenAI \
         .pt file (zip)",
        input.display()
    );
}

/// Picks the tokenizer.json: `--tokenizer`, else the one shipped with the checkpoint, else one
/// next to a .pt file, else the installed vocabulary matching `n_vocab`.
fn find_tokenizer(
    checkpoint: &Checkpoint,
    input: &Path,
    explicit: Option<&Path>,
    models_dir: &Path,
) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("{}: tokenizer file not found", path.display());
        }
        return Ok(path.to_path_buf());
    }
    if let Some(path) = &checkpoint.tokenizer {
        return Ok(path.clone());
    }
    let n_vocab = checkpoint.dims.n_vocab;
    let (kind, fetch) = match n_vocab {
        51864 => (
            "english",
            "scripts/fetch-model.sh tiny.en` (installs the English vocabulary)",
        ),
        51865 => (
            "multilingual",
            "scripts/fetch-model.sh base` (installs the multilingual vocabulary)",
        ),
        51866 => bail!(
            "{}: no tokenizer.json found and no installed vocabulary fits n_vocab 51866 (large-v3); \
             pass --tokenizer with large-v3's tokenizer.json",
            input.display()
        ),
        n => bail!(
            "{}: no tokenizer.json found and no installed vocabulary fits n_vocab {n}; pass --tokenizer",
            input.display()
        ),
    };
    let installed = models_dir.join("vocab").join(kind).join("tokenizer.json");
    if installed.is_file() {
        return Ok(installed);
    }
    bail!(
        "{}: no tokenizer.json found (none next to the checkpoint, no --tokenizer, and no installed \
         {kind} vocabulary at {}); pass --tokenizer FILE or run `{fetch}",
        input.display(),
        installed.display()
    );
}

/// Layer count from names like `<prefix><i><rest>`: one more than the largest index seen.
pub(crate) fn count_layers<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    names
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|i| i.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Shape of tensor `name`, or an error naming `file`.
pub(crate) fn shape_of<'a>(
    tensors: &'a BTreeMap<String, RawTensor>,
    name: &str,
    rank: usize,
    file: &Path,
) -> Result<&'a [usize]> {
    let t = tensors
        .get(name)
        .with_context(|| format!("{}: missing tensor {name}", file.display()))?;
    if t.shape.len() != rank {
        bail!(
            "{}: tensor {name} has shape {:?}, expected rank {rank}",
            file.display(),
            t.shape
        );
    }
    Ok(&t.shape)
}
