//! OpenAI `.pt` checkpoints: a `torch.save` zip holding `<name>/data.pkl` (the pickled
//! `{"dims": {...}, "model_state_dict": {...}}`), `<name>/data/<key>` (raw storages),
//! `<name>/byteorder` and `<name>/version`. The state dict names are already canonical.
use super::pickle::{self, TensorRef, Value};
use super::{Checkpoint, Dims, RawTensor};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

type Archive = zip::ZipArchive<std::io::BufReader<std::fs::File>>;

/// Reads an OpenAI `.pt` file.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let file_name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| anyhow!("{file_name}: cannot open: {e}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow!("{file_name}: not a readable torch.save zip (truncated or corrupt?): {e}"))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .with_context(|| format!("{file_name}: a zip without <name>/data.pkl, not a torch.save file"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();

    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), &file_name) {
        if order.trim_ascii() != b"little" {
            bail!(
                "{file_name}: big-endian checkpoint (byteorder {:?}); only little-endian is supported",
                String::from_utf8_lossy(&order)
            );
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name, &file_name)?;
    let root = pickle::load(&pkl, &format!("{file_name} ({pkl_name})"))?;

    let dims = root
        .get("dims")
        .with_context(|| format!("{file_name}: no 'dims' in the checkpoint"))?;
    let dims = read_dims(&dims).map_err(|e| anyhow!("{file_name}: bad 'dims': {e:#}"))?;
    let state = root
        .get("model_state_dict")
        .with_context(|| format!("{file_name}: no 'model_state_dict' in the checkpoint"))?;
    let items = state
        .str_items()
        .map_err(|e| anyhow!("{file_name}: bad model_state_dict: {e:#}"))?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, value) in items {
        let Value::Tensor(t) = value else {
            bail!(
                "{file_name}: model_state_dict entry {name} is a {}, not a tensor",
                value.kind()
            );
        };
        if !storages.contains_key(&t.storage_key) {
            let entry = format!("{prefix}data/{}", t.storage_key);
            let bytes = read_entry(&mut zip, &entry, &file_name)?;
            let expected = t.storage_numel.checked_mul(super::elem_size(t.dtype));
            if expected != Some(bytes.len()) {
                bail!(
                    "{file_name}: storage {entry} has {} bytes, expected {} elements of {:?} (truncated?)",
                    bytes.len(),
                    t.storage_numel,
                    t.dtype
                );
            }
            storages.insert(t.storage_key.clone(), bytes);
        }
        let storage = storages.get(&t.storage_key).map(Vec::as_slice).unwrap_or(&[]);
        let data = slice(&t, storage).map_err(|e| anyhow!("{file_name}: tensor {name}: {e:#}"))?;
        let raw = RawTensor::new(t.dtype, t.shape.clone(), data, &name).map_err(|e| anyhow!("{file_name}: {e:#}"))?;
        tensors.insert(name, raw);
    }
    let tokenizer = path.parent().map(|p| p.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(Checkpoint {
        format: "openai-pt",
        weights_file: path.to_path_buf(),
        dims,
        alignment_heads: None,
        tensors,
        tokenizer,
    })
}

fn read_entry(zip: &mut Archive, name: &str, file_name: &str) -> Result<Vec<u8>> {
    let mut entry = zip
        .by_name(name)
        .map_err(|e| anyhow!("{file_name}: cannot open {name} in the zip: {e}"))?;
    let mut buf = Vec::with_capacity(entry.size().min(1 << 26) as usize);
    entry
        .read_to_end(&mut buf)
        .map_err(|e| anyhow!("{file_name}: cannot read {name} in the zip (truncated or corrupt?): {e}"))?;
    Ok(buf)
}

/// The bytes of a contiguous tensor view of `storage`.
fn slice(t: &TensorRef, storage: &[u8]) -> Result<Vec<u8>> {
    // Row-major strides; dimensions of size 1 may carry any stride.
    let mut expected = 1usize;
    for (&dim, &stride) in t.shape.iter().zip(&t.stride).rev() {
        if dim != 1 && stride != expected {
            bail!(
                "non-contiguous tensor (shape {:?}, stride {:?}) is not supported",
                t.shape,
                t.stride
            );
        }
        expected = expected.checked_mul(dim).context("shape overflows")?;
    }
    let numel = expected;
    let end = t.offset.checked_add(numel).context("offset overflows")?;
    if end > t.storage_numel {
        bail!(
            "view [{}, {end}) exceeds its storage of {} elements",
            t.offset,
            t.storage_numel
        );
    }
    let size = super::elem_size(t.dtype);
    storage
        .get(t.offset * size..end * size)
        .map(<[u8]>::to_vec)
        .context("view exceeds its storage")
}

fn read_dims(d: &Value) -> Result<Dims> {
    let get = |k: &str| -> Result<usize> {
        match d.get(k) {
            Some(Value::Int(v)) if v >= 0 => Ok(v as usize),
            Some(other) => bail!("{k} is a {}, expected a non-negative int", other.kind()),
            None => bail!("{k} is missing"),
        }
    };
    Ok(Dims {
        n_mels: get("n_mels")?,
        n_audio_ctx: get("n_audio_ctx")?,
        n_audio_state: get("n_audio_state")?,
        n_audio_head: get("n_audio_head")?,
        n_audio_layer: get("n_audio_layer")?,
        n_vocab: get("n_vocab")?,
        n_text_ctx: get("n_text_ctx")?,
        n_text_state: get("n_text_state")?,
        n_text_head: get("n_text_head")?,
        n_text_layer: get("n_text_layer")?,
    })
}
