//! CTranslate2 Whisper directories (the faster-whisper layout): `model.bin`, `config.json`,
//! `tokenizer.json`.
//!
//! `model.bin` (binary version 6, written by CTranslate2's `ModelSpec._serialize`), all
//! little-endian:
//! ```text
//! u32 version (6) | str spec name ("WhisperSpec") | u32 spec revision (3)
//! u32 n_variables, then per variable, sorted by name:
//!     str name | u8 rank | rank x u32 dims | u8 dtype | u32 n_bytes | n_bytes of data
//! u32 n_aliases, then per alias: str alias name | str name of the variable it equals
//! str = u16 length including a trailing NUL | UTF-8 bytes | NUL
//! dtype: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
//! ```
//! Scalars (rank 0) hold spec attributes, e.g. `encoder/num_heads` (int16). The converter aliases
//! any variable whose value equals an earlier one (alphabetically), e.g. the tied output
//! projection `decoder/projection/weight` -> `decoder/embeddings/weight`.
//! Self-attention Q/K/V are fused into `self_attention/linear_0` ([3n, n], rows Q, K, V) and the
//! cross-attention K/V into `attention/linear_1` ([2n, n]); the fused bias has zeros where
//! Whisper's key projection has no bias.
use super::{count_layers, shape_of, Checkpoint, Dims, RawTensor};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

const BINARY_VERSION: u32 = 6;

/// One variable of `model.bin`.
#[derive(Clone, Debug)]
pub struct Variable {
    pub dtype_id: u8,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The parsed `model.bin`: spec name and revision, variables with aliases resolved (copied).
#[derive(Debug)]
pub struct ModelBin {
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Variable>,
    /// (alias, target) as stored.
    pub aliases: Vec<(String, String)>,
}

/// Reads a CTranslate2 Whisper directory into canonical tensors.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let bin_path = dir.join("model.bin");
    let bin = read_model_bin(&bin_path)?;
    if bin.spec != "WhisperSpec" {
        bail!(
            "{}: a CTranslate2 {} model, not a Whisper one (WhisperSpec)",
            bin_path.display(),
            bin.spec
        );
    }
    let config_path = dir.join("config.json");
    let alignment_heads = read_alignment_heads(&config_path)?;
    let (tensors, heads) = to_canonical(bin, &bin_path)?;
    let dims = dims(&tensors, heads, &bin_path)?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(Checkpoint {
        format: "ctranslate2",
        weights_file: bin_path,
        dims,
        alignment_heads,
        tensors,
        tokenizer,
    })
}

/// `alignment_heads` of CTranslate2's config.json ([[layer, head], ...]), if the file has them.
fn read_alignment_heads(path: &Path) -> Result<Option<Vec<[usize; 2]>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    match value.get("alignment_heads") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            anyhow!(
                "{}: alignment_heads is not a list of [layer, head]: {e}",
                path.display()
            )
        }),
    }
}

/// Reads a `model.bin`, checking every length against the file size before reading it.
pub fn read_model_bin(path: &Path) -> Result<ModelBin> {
    let file = std::fs::File::open(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?
        .len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        pos: 0,
        len,
    };
    parse(&mut r).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if self.len.saturating_sub(self.pos) < n {
            bail!(
                "truncated or corrupt: {what} needs {n} bytes at offset {}, but the file has {} bytes",
                self.pos,
                self.len
            );
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .with_context(|| format!("read error at offset {}", self.pos))?;
        self.pos += n;
        Ok(buf)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let v = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)?;
        if n == 0 {
            bail!("corrupt: {what} has length 0 at offset {}", self.pos);
        }
        let mut b = self.bytes(n as u64, what)?;
        if b.pop() != Some(0) {
            bail!("corrupt: {what} is not NUL-terminated (offset {})", self.pos);
        }
        String::from_utf8(b).map_err(|_| anyhow!("corrupt: {what} is not UTF-8 (offset {})", self.pos))
    }
}

fn parse<R: Read>(r: &mut Reader<R>) -> Result<ModelBin> {
    let version = r.u32("binary version")?;
    if version != BINARY_VERSION {
        bail!(
            "CTranslate2 binary version {version} is not supported (expected {BINARY_VERSION}); \
             re-convert the model with CTranslate2 >= 3"
        );
    }
    let spec = r.string("spec name")?;
    let revision = r.u32("spec revision")?;
    let count = r.u32("variable count")?;
    let mut variables = BTreeMap::new();
    for i in 0..count {
        let name = r.string(&format!("name of variable {i}"))?;
        let rank = r.u8(&format!("rank of {name}"))?;
        let mut shape = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            shape.push(r.u32(&format!("shape of {name}"))? as usize);
        }
        let dtype_id = r.u8(&format!("dtype of {name}"))?;
        let n_bytes = r.u32(&format!("size of {name}"))?;
        let elem = dtype_size(dtype_id).with_context(|| format!("variable {name}"))?;
        let expected = shape.iter().try_fold(elem, |a, &d| a.checked_mul(d));
        if expected != Some(n_bytes as usize) {
            bail!("corrupt: variable {name} of shape {shape:?} has {n_bytes} bytes");
        }
        let data = r.bytes(n_bytes as u64, &format!("data of {name}"))?;
        variables.insert(name, Variable { dtype_id, shape, data });
    }
    let n_aliases = r.u32("alias count")?;
    let mut aliases = Vec::new();
    for i in 0..n_aliases {
        let alias = r.string(&format!("alias {i}"))?;
        let target = r.string(&format!("target of alias {alias}"))?;
        aliases.push((alias, target));
    }
    if r.pos != r.len {
        bail!("corrupt: {} unexpected bytes after the aliases", r.len - r.pos);
    }
    for (alias, target) in &aliases {
        let v = variables
            .get(target)
            .with_context(|| format!("corrupt: alias {alias} points to unknown variable {target}"))?
            .clone();
        variables.insert(alias.clone(), v);
    }
    Ok(ModelBin {
        spec,
        revision,
        variables,
        aliases,
    })
}

fn dtype_size(id: u8) -> Result<usize> {
    Ok(match id {
        0 | 3 => 4,
        1 => 1,
        2 | 4 | 5 => 2,
        other => bail!("unknown dtype id {other}"),
    })
}

fn float_dtype(id: u8) -> Option<Dtype> {
    match id {
        0 => Some(Dtype::F32),
        4 => Some(Dtype::F16),
        5 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Integer value of a scalar variable (spec attributes such as `num_heads`).
fn scalar(v: &Variable) -> Option<i64> {
    if !v.shape.is_empty() {
        return None;
    }
    let d = &v.data;
    match (v.dtype_id, d.len()) {
        (1, 1) => Some(d[0] as i8 as i64),
        (2, 2) => Some(i16::from_le_bytes([d[0], d[1]]) as i64),
        (3, 4) => Some(i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64),
        _ => None,
    }
}

/// Maps CTranslate2 variable names onto canonical names, splitting the fused projections.
/// Returns the tensors and the (encoder, decoder) head counts when the spec stores them.
/// (encoder, decoder) attention heads, when the spec stores them.
type Heads = (Option<usize>, Option<usize>);

fn to_canonical(bin: ModelBin, path: &Path) -> Result<(BTreeMap<String, RawTensor>, Heads)> {
    let file = path.display();
    let mut heads = (None, None);
    let mut out = BTreeMap::new();
    let mut projection = None;
    let embeddings = bin.variables.get("decoder/embeddings/weight").map(|v| v.data.clone());
    for (name, var) in bin.variables {
        if var.shape.is_empty() {
            match name.as_str() {
                "encoder/num_heads" => heads.0 = scalar(&var).map(|h| h as usize),
                "decoder/num_heads" => heads.1 = scalar(&var).map(|h| h as usize),
                "decoder/scale_embeddings" if scalar(&var).unwrap_or(0) != 0 => {
                    bail!("{file}: decoder/scale_embeddings is set; Whisper does not scale embeddings")
                }
                _ => {} // other spec attributes (activation, pre_norm, alignment_layer, ...)
            }
            continue;
        }
        let dtype = float_dtype(var.dtype_id).with_context(|| {
            format!(
                "{file}: variable {name} has dtype id {} (a quantized model?); only float32, float16 \
                 and bfloat16 CTranslate2 models can be converted",
                var.dtype_id
            )
        })?;
        if name == "decoder/projection/weight" {
            projection = Some(var.data);
            continue;
        }
        let Some((canonical, fused)) = rename(&name) else {
            bail!("{file}: unexpected variable {name} in a WhisperSpec model");
        };
        let raw = RawTensor::new(dtype, var.shape, var.data, &name).map_err(|e| anyhow!("{file}: {e:#}"))?;
        match fused {
            Fused::No => {
                out.insert(canonical, raw);
            }
            Fused::Qkv => split(&mut out, &raw, &canonical, &["query", "key", "value"], path)?,
            Fused::Kv => split(&mut out, &raw, &canonical, &["key", "value"], path)?,
        }
    }
    // The output projection is tied to the token embedding in Whisper.
    if let Some(p) = projection {
        if Some(&p) != embeddings.as_ref() {
            bail!("{file}: decoder/projection/weight differs from decoder/embeddings/weight (Whisper ties them)");
        }
    }
    Ok((out, heads))
}

enum Fused {
    No,
    /// Self-attention Q, K, V: `canonical` is the attention prefix, e.g. `encoder.blocks.0.attn`.
    Qkv,
    /// Cross-attention K, V.
    Kv,
}

/// Canonical name for a CTranslate2 variable (for fused ones: the attention prefix + `.weight`
/// or `.bias` is appended by `split`).
fn rename(name: &str) -> Option<(String, Fused)> {
    let fixed = match name {
        "encoder/conv1/weight" => "encoder.conv1.weight",
        "encoder/conv1/bias" => "encoder.conv1.bias",
        "encoder/conv2/weight" => "encoder.conv2.weight",
        "encoder/conv2/bias" => "encoder.conv2.bias",
        "encoder/position_encodings/encodings" => "encoder.positional_embedding",
        "encoder/layer_norm/gamma" => "encoder.ln_post.weight",
        "encoder/layer_norm/beta" => "encoder.ln_post.bias",
        "decoder/embeddings/weight" => "decoder.token_embedding.weight",
        "decoder/position_encodings/encodings" => "decoder.positional_embedding",
        "decoder/layer_norm/gamma" => "decoder.ln.weight",
        "decoder/layer_norm/beta" => "decoder.ln.bias",
        _ => "",
    };
    if !fixed.is_empty() {
        return Some((fixed.to_string(), Fused::No));
    }
    let (side, rest) = name.split_once("/layer_")?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (index, rest) = rest.split_once('/')?;
    index.parse::<usize>().ok()?;
    let block = format!("{side}.blocks.{index}");
    let (module, param) = rest.rsplit_once('/')?;
    let param = match param {
        "weight" | "gamma" => "weight",
        "bias" | "beta" => "bias",
        _ => return None,
    };
    let cross = side == "decoder";
    let (target, fused) = match module {
        "self_attention/linear_0" => (format!("{block}.attn"), Fused::Qkv),
        "self_attention/linear_1" => (format!("{block}.attn.out"), Fused::No),
        "self_attention/layer_norm" => (format!("{block}.attn_ln"), Fused::No),
        "attention/linear_0" if cross => (format!("{block}.cross_attn.query"), Fused::No),
        "attention/linear_1" if cross => (format!("{block}.cross_attn"), Fused::Kv),
        "attention/linear_2" if cross => (format!("{block}.cross_attn.out"), Fused::No),
        "attention/layer_norm" if cross => (format!("{block}.cross_attn_ln"), Fused::No),
        "ffn/linear_0" => (format!("{block}.mlp.0"), Fused::No),
        "ffn/linear_1" => (format!("{block}.mlp.2"), Fused::No),
        "ffn/layer_norm" => (format!("{block}.mlp_ln"), Fused::No),
        _ => return None,
    };
    Some((format!("{target}.{param}"), fused))
}

/// Splits a fused projection along its first axis into `parts`; the key part of a fused bias
/// must be zero (Whisper's key projection has no bias) and is dropped.
fn split(
    out: &mut BTreeMap<String, RawTensor>,
    raw: &RawTensor,
    canonical: &str,
    parts: &[&str],
    path: &Path,
) -> Result<()> {
    let file = path.display();
    let (prefix, param) = canonical.rsplit_once('.').unwrap_or((canonical, ""));
    let rows = raw.shape.first().copied().unwrap_or(0);
    if rows == 0 || rows % parts.len() != 0 {
        bail!(
            "{file}: fused variable {} has shape {:?}, not {} equal parts",
            raw.source_name,
            raw.shape,
            parts.len()
        );
    }
    let part_bytes = raw.data.len() / parts.len();
    let mut shape = raw.shape.clone();
    shape[0] = rows / parts.len();
    for (i, part) in parts.iter().enumerate() {
        let bytes = &raw.data[i * part_bytes..(i + 1) * part_bytes];
        if *part == "key" && param == "bias" {
            if !all_zero(raw.dtype, bytes) {
                bail!(
                    "{file}: {} has a non-zero key bias; Whisper's key projection has none, refusing to drop it",
                    raw.source_name
                );
            }
            continue;
        }
        let name = format!("{prefix}.{part}.{param}");
        out.insert(
            name,
            RawTensor::new(raw.dtype, shape.clone(), bytes.to_vec(), &raw.source_name)?,
        );
    }
    Ok(())
}

/// True if every element is +0 or -0.
fn all_zero(dtype: Dtype, bytes: &[u8]) -> bool {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .all(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff == 0),
        _ => bytes
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7fff == 0),
    }
}

/// Dimensions from the tensor shapes; head counts from the spec (else n_state / 64, which holds
/// for every official Whisper size).
fn dims(t: &BTreeMap<String, RawTensor>, heads: Heads, path: &Path) -> Result<Dims> {
    let conv1 = shape_of(t, "encoder.conv1.weight", 3, path)?;
    let (n_audio_state, n_mels) = (conv1[0], conv1[1]);
    let n_audio_ctx = shape_of(t, "encoder.positional_embedding", 2, path)?[0];
    let emb = shape_of(t, "decoder.token_embedding.weight", 2, path)?;
    let (n_vocab, n_text_state) = (emb[0], emb[1]);
    let n_text_ctx = shape_of(t, "decoder.positional_embedding", 2, path)?[0];
    Ok(Dims {
        n_mels,
        n_audio_ctx,
        n_audio_state,
        n_audio_head: heads.0.unwrap_or(n_audio_state / 64),
        n_audio_layer: count_layers(t.keys(), "encoder.blocks."),
        n_vocab,
        n_text_ctx,
        n_text_state,
        n_text_head: heads.1.unwrap_or(n_text_state / 64),
        n_text_layer: count_layers(t.keys(), "decoder.blocks."),
    })
}
