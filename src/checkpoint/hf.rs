//! Hugging Face transformers Whisper directories: `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `config.json`, optionally `generation_config.json` and
//! `tokenizer.json`. Tensor names are mapped onto openai-whisper's (see `rename`).
use super::{Checkpoint, Dims, RawTensor};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads a Hugging Face Whisper directory.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    if let Some(t) = config.get("model_type").and_then(Value::as_str) {
        if t != "whisper" {
            bail!("{}: model_type is {t:?}, not \"whisper\"", config_path.display());
        }
    }
    let dims = dims(&config).map_err(|e| anyhow!("{}: not a Whisper config: {e:#}", config_path.display()))?;

    let files = weight_files(dir)?;
    let weights_file = files.first().cloned().unwrap_or_else(|| dir.join("model.safetensors"));
    let mut tensors = BTreeMap::new();
    let mut proj_out = None;
    for file in &files {
        let name = file.display();
        let bytes = std::fs::read(file).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{name}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
        for (hf_name, view) in st.tensors() {
            let raw = RawTensor::new(view.dtype(), view.shape().to_vec(), view.data().to_vec(), &hf_name)
                .map_err(|e| anyhow!("{name}: {e:#}"))?;
            let short = hf_name.strip_prefix("model.").unwrap_or(&hf_name);
            if short == "proj_out.weight" {
                proj_out = Some(raw);
                continue;
            }
            if short.ends_with("k_proj.bias") {
                // Whisper's key projection has no bias; accept an all-zero one and drop it.
                if raw
                    .data
                    .chunks_exact(super::elem_size(raw.dtype).max(1))
                    .any(|b| !is_zero(b))
                {
                    bail!("{name}: {hf_name} is a non-zero key bias; Whisper has none, refusing to drop it");
                }
                continue;
            }
            let canonical = rename(short).with_context(|| format!("{name}: unexpected tensor {hf_name}"))?;
            tensors.insert(canonical, raw);
        }
    }
    // proj_out is tied to the token embedding in Whisper.
    if let Some(p) = proj_out {
        let emb = tensors.get("decoder.token_embedding.weight");
        if emb.map(|e| (&e.shape, &e.data, e.dtype)) != Some((&p.shape, &p.data, p.dtype)) {
            bail!(
                "{}: proj_out.weight differs from model.decoder.embed_tokens.weight (Whisper ties them)",
                weights_file.display()
            );
        }
    }
    let alignment_heads = read_alignment_heads(&dir.join("generation_config.json"))?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(Checkpoint {
        format: "huggingface",
        weights_file,
        dims,
        alignment_heads,
        tensors,
        tokenizer,
    })
}

fn is_zero(b: &[u8]) -> bool {
    // Little-endian float: every byte zero except possibly the sign bit of the last one.
    b.split_last()
        .is_some_and(|(last, rest)| last & 0x7f == 0 && rest.iter().all(|&x| x == 0))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))
}

/// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let index = read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no weight_map", index_path.display()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in map.values() {
        let shard = shard
            .as_str()
            .with_context(|| format!("{}: bad weight_map", index_path.display()))?;
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            bail!(
                "{}: shard name {shard:?} is not a plain file name",
                index_path.display()
            );
        }
        let p = dir.join(shard);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

fn dims(c: &Value) -> Result<Dims> {
    let get = |k: &str| -> Result<usize> {
        c.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .with_context(|| format!("{k} is missing or not a number"))
    };
    let d_model = get("d_model")?;
    Ok(Dims {
        n_mels: get("num_mel_bins")?,
        n_audio_ctx: get("max_source_positions")?,
        n_audio_state: d_model,
        n_audio_head: get("encoder_attention_heads")?,
        n_audio_layer: get("encoder_layers")?,
        n_vocab: get("vocab_size")?,
        n_text_ctx: get("max_target_positions")?,
        n_text_state: d_model,
        n_text_head: get("decoder_attention_heads")?,
        n_text_layer: get("decoder_layers")?,
    })
}

fn read_alignment_heads(path: &Path) -> Result<Option<Vec<[usize; 2]>>> {
    if !path.is_file() {
        return Ok(None);
    }
    match read_json(path)?.get("alignment_heads") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            anyhow!(
                "{}: alignment_heads is not a list of [layer, head]: {e}",
                path.display()
            )
        }),
    }
}

/// openai-whisper's name for a transformers name (without the leading `model.`).
fn rename(name: &str) -> Option<String> {
    let fixed = match name {
        "encoder.embed_positions.weight" => "encoder.positional_embedding",
        "decoder.embed_positions.weight" => "decoder.positional_embedding",
        "decoder.embed_tokens.weight" => "decoder.token_embedding.weight",
        "encoder.layer_norm.weight" => "encoder.ln_post.weight",
        "encoder.layer_norm.bias" => "encoder.ln_post.bias",
        "decoder.layer_norm.weight" => "decoder.ln.weight",
        "decoder.layer_norm.bias" => "decoder.ln.bias",
        "encoder.conv1.weight" | "encoder.conv1.bias" | "encoder.conv2.weight" | "encoder.conv2.bias" => name,
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_string());
    }
    let (side, rest) = name.split_once(".layers.")?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (index, rest) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let module = match module {
        "self_attn.q_proj" => "attn.query",
        "self_attn.k_proj" => "attn.key",
        "self_attn.v_proj" => "attn.value",
        "self_attn.out_proj" => "attn.out",
        "self_attn_layer_norm" => "attn_ln",
        "encoder_attn.q_proj" if side == "decoder" => "cross_attn.query",
        "encoder_attn.k_proj" if side == "decoder" => "cross_attn.key",
        "encoder_attn.v_proj" if side == "decoder" => "cross_attn.value",
        "encoder_attn.out_proj" if side == "decoder" => "cross_attn.out",
        "encoder_attn_layer_norm" if side == "decoder" => "cross_attn_ln",
        "fc1" => "mlp.0",
        "fc2" => "mlp.2",
        "final_layer_norm" => "mlp_ln",
        _ => return None,
    };
    Some(format!("{side}.blocks.{index}.{module}.{param}"))
}
