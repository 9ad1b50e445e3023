//! Writes the canonical model directory: `model.safetensors` (canonical names, stored dtype kept),
//! `config.json` ([`ModelConfig`]) and `tokenizer.json` (copied).
//!
//! Everything is written into a hidden sibling directory first and renamed into place at the
//! end, so a failed convert never leaves a complete-looking model directory behind.
use super::Checkpoint;
use crate::model::config::ModelConfig;
use crate::model::weights::canonical_shapes;
use crate::text::special::special_tokens;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Validates `ck` and writes it with `tokenizer_file` into `output`; returns the config written.
pub fn write(ck: &Checkpoint, tokenizer_file: &Path, output: &Path) -> Result<ModelConfig> {
    let config = build_config(ck, tokenizer_file)?;
    validate_tensors(ck, &config)?;
    check_output(output)?;

    let tmp = sibling(output, "tmp")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| anyhow!("{}: cannot remove stale temporary: {e}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| anyhow!("{}: cannot create: {e}", tmp.display()))?;
    let written = write_files(ck, &config, tokenizer_file, &tmp).and_then(|()| replace(&tmp, output));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(config)
}

fn build_config(ck: &Checkpoint, tokenizer_file: &Path) -> Result<ModelConfig> {
    let tf = tokenizer_file.display();
    let tok = tokenizers::Tokenizer::from_file(tokenizer_file)
        .map_err(|e| anyhow!("{tf}: not a valid tokenizer.json: {e}"))?;
    let special = special_tokens(&tok).map_err(|e| anyhow!("{tf}: {e:#}"))?;
    let d = &ck.dims;
    // Plausibility first, so that absurd dims from a damaged file cannot make the shape list huge.
    let all = [
        d.n_mels,
        d.n_audio_ctx,
        d.n_audio_state,
        d.n_audio_head,
        d.n_vocab,
        d.n_text_ctx,
        d.n_text_state,
        d.n_text_head,
    ];
    if all.iter().any(|&x| x > 1 << 20) || d.n_audio_layer.saturating_add(d.n_text_layer) > ck.tensors.len().max(1) {
        bail!("{}: implausible model dimensions {d:?}", ck.weights_file.display());
    }
    let n_tokens = tok.get_vocab_size(true);
    if n_tokens > d.n_vocab {
        bail!(
            "{tf}: the tokenizer has {n_tokens} tokens but the model's vocabulary has {}; wrong tokenizer \
             (English vs multilingual?)",
            d.n_vocab
        );
    }
    let config = ModelConfig {
        n_mels: d.n_mels,
        n_audio_ctx: d.n_audio_ctx,
        n_audio_state: d.n_audio_state,
        n_audio_head: d.n_audio_head,
        n_audio_layer: d.n_audio_layer,
        n_vocab: d.n_vocab,
        n_text_ctx: d.n_text_ctx,
        n_text_state: d.n_text_state,
        n_text_head: d.n_text_head,
        n_text_layer: d.n_text_layer,
        multilingual: d.n_vocab >= 51865,
        special_tokens: special,
        alignment_heads: ck.alignment_heads.clone(),
        source_format: ck.format.to_string(),
    };
    config
        .validate()
        .map_err(|e| anyhow!("{}: {e:#}", ck.weights_file.display()))?;
    if let Some(heads) = &config.alignment_heads {
        if let Some(h) = heads
            .iter()
            .find(|[l, h]| *l >= config.n_text_layer || *h >= config.n_text_head)
        {
            bail!(
                "{}: alignment head {h:?} is outside the decoder",
                ck.weights_file.display()
            );
        }
    }
    Ok(config)
}

/// Every canonical tensor present with its shape and a float dtype, nothing else.
fn validate_tensors(ck: &Checkpoint, config: &ModelConfig) -> Result<()> {
    let file = ck.weights_file.display();
    let expected = canonical_shapes(config);
    for (name, shape) in &expected {
        let t = ck
            .tensors
            .get(name)
            .with_context(|| format!("{file}: missing tensor {name}"))?;
        let stored = if t.source_name != *name {
            format!(" (stored as {})", t.source_name)
        } else {
            String::new()
        };
        if &t.shape != shape {
            bail!(
                "{file}: tensor {name} has shape {:?}, expected {:?}{stored}",
                t.shape,
                shape
            );
        }
        if !matches!(t.dtype, Dtype::F16 | Dtype::F32 | Dtype::BF16) {
            bail!(
                "{file}: tensor {name} has dtype {:?}, expected F16, F32 or BF16{stored}",
                t.dtype
            );
        }
    }
    if let Some(extra) = ck.tensors.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
        bail!("{file}: unexpected tensor {extra} (not part of a model with these dimensions)");
    }
    Ok(())
}

fn write_files(ck: &Checkpoint, config: &ModelConfig, tokenizer_file: &Path, dir: &Path) -> Result<()> {
    let st_path = dir.join("model.safetensors");
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(ck.tensors.iter(), Some(info), &st_path)
        .map_err(|e| anyhow!("{}: cannot write: {e}", st_path.display()))?;
    config.save(&dir.join("config.json"))?;
    let tok_path = dir.join("tokenizer.json");
    std::fs::copy(tokenizer_file, &tok_path).map_err(|e| {
        anyhow!(
            "{}: cannot copy to {}: {e}",
            tokenizer_file.display(),
            tok_path.display()
        )
    })?;
    // serialize_to_file goes through a private (0600) temporary and copy keeps the source's mode:
    // make both ordinary readable files, like config.json.
    #[cfg(unix)]
    for path in [&st_path, &tok_path] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| anyhow!("{}: cannot set permissions: {e}", path.display()))?;
    }
    Ok(())
}

/// A hidden sibling of `output`, e.g. `models/.tiny.en.tmp-1234`.
fn sibling(output: &Path, what: &str) -> Result<PathBuf> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a usable output directory name", output.display()))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.{what}-{}", std::process::id())))
}

/// What is at `output` now.
enum Existing {
    Nothing,
    EmptyDir,
    ModelDir,
}

/// Refuses an output that is a file or a non-empty directory other than a previous model dir.
fn check_output(output: &Path) -> Result<Existing> {
    let out = output.display();
    let meta = match std::fs::symlink_metadata(output) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => bail!("{out}: cannot inspect output: {e}"),
    };
    if !meta.is_dir() {
        bail!("{out}: output exists and is not a directory; refusing to overwrite it");
    }
    let mut entries = std::fs::read_dir(output).map_err(|e| anyhow!("{out}: cannot list: {e}"))?;
    if entries.next().is_none() {
        return Ok(Existing::EmptyDir);
    }
    if ModelConfig::load(&output.join("config.json")).is_ok() {
        return Ok(Existing::ModelDir);
    }
    bail!("{out}: output directory is not empty and is not a whisper-trt model directory; refusing to overwrite it");
}

/// Moves the finished `tmp` to `output`, replacing an empty dir or a previous model dir.
fn replace(tmp: &Path, output: &Path) -> Result<()> {
    let out = output.display();
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| anyhow!("{}: cannot create: {e}", parent.display()))?;
    }
    let old = match check_output(output)? {
        Existing::Nothing => None,
        Existing::EmptyDir => {
            std::fs::remove_dir(output).map_err(|e| anyhow!("{out}: cannot replace: {e}"))?;
            None
        }
        Existing::ModelDir => {
            let old = sibling(output, "old")?;
            std::fs::rename(output, &old).map_err(|e| anyhow!("{out}: cannot move the previous model aside: {e}"))?;
            Some(old)
        }
    };
    std::fs::rename(tmp, output).map_err(|e| anyhow!("{out}: cannot move the new model into place: {e}"))?;
    if let Some(old) = old {
        std::fs::remove_dir_all(&old)
            .map_err(|e| anyhow!("{}: cannot remove the previous model: {e}", old.display()))?;
    }
    Ok(())
}
