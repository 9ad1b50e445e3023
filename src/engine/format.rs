//! The engine file: everything the CUDA backend needs to run one model on one kind of GPU.
//!
//! Layout (little-endian):
//! ```text
//! b"WTRTENG\0" | u32 format version | u64 header length | JSON header | blobs
//! ```
//! The JSON header holds [`EngineHeader`] plus an index of the blobs (cubins and tensors): name,
//! absolute file offset, length, and for tensors dtype and shape. Every blob starts on a 256-byte
//! boundary, so the file can be read (or mapped) straight into aligned device copies.
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"WTRTENG\0";
/// Bumped whenever the layout of the file or of its tensors changes.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of every blob's offset.
pub const ALIGN: u64 = 256;
/// Bytes before the JSON header: magic, version, header length.
const PREAMBLE: u64 = 8 + 4 + 8;
/// A header larger than this is corruption (real headers are tens of kilobytes).
const MAX_HEADER: u64 = 64 << 20;

const REBUILD: &str = "rebuild it with `whisper-trt build`";

/// The options an engine was built with; device memory is sized by them at load.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// "fp16" (the only one so far).
    pub dtype: String,
    pub max_batch: usize,
    pub beam_width: usize,
    pub max_new_tokens: usize,
    /// Weight-only quantization of the linear layers and the token embedding (`--weight-only`);
    /// None: fp16 weights.
    #[serde(default)]
    pub weight_only: Option<crate::quant::WeightQuant>,
    /// int8 self-attention cache and cross-attention K/V (`--int8-kv`), with the calibrated
    /// scales in the engine tensor `kv.scales` (see [`crate::kv_quant`]).
    #[serde(default)]
    pub int8_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F16,
    F32,
    I8,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::I8 => 1,
        }
    }
}

/// One weight tensor as the kernels read it (raw little-endian bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct EngineTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The cuBLASLt algorithm chosen for one GEMM shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GemmTactic {
    /// Shape and epilogue key (see backends::cuda::gemm).
    pub key: String,
    /// The raw bytes of a `cublasLtMatmulAlgo_t`.
    #[serde(with = "hex_bytes")]
    pub algo: Vec<u8>,
    /// Its measured time, microseconds.
    pub micros: f32,
}

/// Everything in the file but the blobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EngineHeader {
    pub format_version: u32,
    pub config: ModelConfig,
    pub options: BuildOptions,
    pub gpu_name: String,
    pub compute_capability: (u32, u32),
    /// cuDriverGetVersion at build time (e.g. 13000).
    pub driver_version: i32,
    /// `nvrtc::kernel_hash()` of the binary that built the engine.
    pub kernel_hash: String,
    pub tactics: Vec<GemmTactic>,
}

pub struct Engine {
    pub header: EngineHeader,
    /// (kernel file stem, cubin), in KERNEL_SOURCES order.
    pub modules: Vec<(String, Vec<u8>)>,
    pub tensors: Vec<EngineTensor>,
    /// The file it was loaded from (None when built in memory); named in compatibility errors.
    pub path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct BlobEntry {
    name: String,
    offset: u64,
    len: u64,
}

#[derive(Serialize, Deserialize)]
struct TensorEntry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: u64,
}

/// What the JSON header holds: the public header and the blob index.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    #[serde(flatten)]
    header: EngineHeader,
    modules: Vec<BlobEntry>,
    tensors: Vec<TensorEntry>,
}

/// A blob and its offset in the file.
type Placed<'a> = (u64, &'a [u8]);

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

impl Engine {
    /// Writes the engine to `path` through a temporary file and a rename, so a failed or
    /// interrupted save never leaves a complete-looking engine.
    pub fn save(&self, path: &Path) -> Result<()> {
        for t in &self.tensors {
            let expected = t.shape.iter().product::<usize>() * t.dtype.size();
            if t.data.len() != expected {
                bail!(
                    "{}: tensor {} has {} bytes, shape {:?} needs {expected}",
                    path.display(),
                    t.name,
                    t.data.len(),
                    t.shape
                );
            }
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let result = self.write_to(&tmp).and_then(|_| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("{}: cannot write (rename from {})", path.display(), tmp.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_to(&self, tmp: &Path) -> Result<()> {
        let (header_json, blobs) = self.layout()?;
        let err = || format!("{}: cannot write", tmp.display());
        let file = File::create(tmp).with_context(err)?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        w.write_all(MAGIC).with_context(err)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes()).with_context(err)?;
        w.write_all(&(header_json.len() as u64).to_le_bytes())
            .with_context(err)?;
        w.write_all(&header_json).with_context(err)?;
        let mut pos = PREAMBLE + header_json.len() as u64;
        for (offset, data) in blobs {
            std::io::copy(&mut std::io::repeat(0).take(offset - pos), &mut w).with_context(err)?;
            w.write_all(data).with_context(err)?;
            pos = offset + data.len() as u64;
        }
        let file = w.into_inner().map_err(|e| e.into_error()).with_context(err)?;
        file.sync_all().with_context(err)?;
        Ok(())
    }

    /// The JSON header and each blob with its file offset. Offsets depend on the header's length,
    /// which depends on the offsets' digits: iterate until the start of the blobs is stable.
    fn layout(&self) -> Result<(Vec<u8>, Vec<Placed<'_>>)> {
        let blobs: Vec<&[u8]> = self
            .modules
            .iter()
            .map(|(_, c)| c.as_slice())
            .chain(self.tensors.iter().map(|t| t.data.as_slice()))
            .collect();
        let mut data_start = 0;
        loop {
            let mut offsets = Vec::with_capacity(blobs.len());
            let mut pos = data_start;
            for b in &blobs {
                offsets.push(pos);
                pos = align(pos + b.len() as u64);
            }
            let n = self.modules.len();
            let fh = FileHeader {
                header: self.header.clone(),
                modules: self
                    .modules
                    .iter()
                    .zip(&offsets)
                    .map(|((name, c), &offset)| BlobEntry {
                        name: name.clone(),
                        offset,
                        len: c.len() as u64,
                    })
                    .collect(),
                tensors: self
                    .tensors
                    .iter()
                    .zip(&offsets[n..])
                    .map(|(t, &offset)| TensorEntry {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        offset,
                        len: t.data.len() as u64,
                    })
                    .collect(),
            };
            let json = serde_json::to_vec(&fh)?;
            let needed = align(PREAMBLE + json.len() as u64);
            if needed <= data_start {
                return Ok((json, offsets.into_iter().zip(blobs).collect()));
            }
            data_start = needed;
        }
    }

    /// Reads the whole engine. Errors name the file; a corrupt, truncated or outdated file says to rebuild.
    pub fn load(path: &Path) -> Result<Engine> {
        let (mut file, len, fh) = open(path)?;
        let bad = |what: String| anyhow!("{}: corrupt engine file: {what}; {REBUILD}", path.display());
        let check = |name: &str, offset: u64, n: u64| -> Result<()> {
            if !offset.is_multiple_of(ALIGN) {
                return Err(bad(format!("blob {name} is not aligned")));
            }
            if offset.checked_add(n).is_none_or(|end| end > len) {
                bail!(
                    "{}: truncated engine file ({len} bytes, blob {name} needs {}); {REBUILD}",
                    path.display(),
                    offset.saturating_add(n)
                );
            }
            Ok(())
        };
        let mut read = |name: &str, offset: u64, n: u64| -> Result<Vec<u8>> {
            check(name, offset, n)?;
            let mut data = vec![0u8; n as usize];
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut data))
                .with_context(|| format!("{}: cannot read blob {name}", path.display()))?;
            Ok(data)
        };
        let mut modules = Vec::with_capacity(fh.modules.len());
        for m in &fh.modules {
            modules.push((m.name.clone(), read(&m.name, m.offset, m.len)?));
        }
        let mut tensors = Vec::with_capacity(fh.tensors.len());
        for t in &fh.tensors {
            let expected = t.shape.iter().try_fold(t.dtype.size(), |a, &d| a.checked_mul(d));
            if expected != Some(t.len as usize) {
                return Err(bad(format!(
                    "tensor {} has {} bytes for shape {:?}",
                    t.name, t.len, t.shape
                )));
            }
            let data = read(&t.name, t.offset, t.len)?;
            tensors.push(EngineTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data,
            });
        }
        Ok(Engine {
            header: fh.header,
            modules,
            tensors,
            path: Some(path.to_path_buf()),
        })
    }

    /// Refuses an engine this binary on a GPU of compute capability `major.minor` cannot run.
    pub fn check_compatible(&self, major: u32, minor: u32) -> Result<()> {
        let name = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "engine".into());
        self.header.check_compatible(major, minor).with_context(|| name)
    }

    /// The tensor `name`, which must have `dtype` and `shape`.
    pub fn tensor(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&EngineTensor> {
        let file = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "engine".into());
        let t = self
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow!("{file}: no tensor {name}; {REBUILD}"))?;
        if t.dtype != dtype || t.shape != shape {
            bail!(
                "{file}: tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}; {REBUILD}",
                t.dtype,
                t.shape
            );
        }
        Ok(t)
    }

    /// The cubin of kernel file `stem`.
    pub fn module(&self, stem: &str) -> Option<&[u8]> {
        self.modules.iter().find(|(s, _)| s == stem).map(|(_, c)| c.as_slice())
    }
}

impl EngineHeader {
    /// Reads only the header (fast: no weights), with the same checks as [`Engine::load`].
    pub fn read(path: &Path) -> Result<EngineHeader> {
        Ok(open(path)?.2.header)
    }

    /// The compatibility checks of [`Engine::check_compatible`], without naming the file.
    pub fn check_compatible(&self, major: u32, minor: u32) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "engine format version {} but this whisper-trt reads version {FORMAT_VERSION}; {REBUILD}",
                self.format_version
            );
        }
        let (m, n) = self.compute_capability;
        if (m, n) != (major, minor) {
            bail!("engine built for compute capability {m}.{n} (sm_{m}{n}), this GPU is {major}.{minor} (sm_{major}{minor}); {REBUILD}");
        }
        let ours = super::nvrtc::kernel_hash();
        if self.kernel_hash != ours {
            bail!(
                "engine built from other kernels (hash {}, this whisper-trt has {ours}); {REBUILD}",
                self.kernel_hash
            );
        }
        Ok(())
    }
}

/// Opens `path` and reads its preamble and JSON header.
fn open(path: &Path) -> Result<(File, u64, FileHeader)> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open engine file", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot read engine file", path.display()))?
        .len();
    let mut pre = [0u8; PREAMBLE as usize];
    if len < PREAMBLE {
        bail!(
            "{}: not a whisper-trt engine (only {len} bytes); {REBUILD}",
            path.display()
        );
    }
    file.read_exact(&mut pre)
        .with_context(|| format!("{}: cannot read engine file", path.display()))?;
    if &pre[..8] != MAGIC {
        bail!("{}: not a whisper-trt engine (bad magic)", path.display());
    }
    let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
    if version != FORMAT_VERSION {
        bail!(
            "{}: engine format version {version} but this whisper-trt reads version {FORMAT_VERSION}; {REBUILD}",
            path.display()
        );
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&pre[12..20]);
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER {
        bail!(
            "{}: corrupt engine file: header length {header_len}; {REBUILD}",
            path.display()
        );
    }
    if PREAMBLE + header_len > len {
        bail!(
            "{}: truncated engine file ({len} bytes, header ends at {}); {REBUILD}",
            path.display(),
            PREAMBLE + header_len
        );
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)
        .with_context(|| format!("{}: cannot read engine header", path.display()))?;
    let fh: FileHeader = serde_json::from_slice(&json)
        .map_err(|e| anyhow!("{}: corrupt engine header ({e}); {REBUILD}", path.display()))?;
    if fh.header.format_version != version {
        bail!(
            "{}: corrupt engine file: header says format version {}, preamble {version}; {REBUILD}",
            path.display(),
            fh.header.format_version
        );
    }
    Ok((file, len, fh))
}

/// Byte strings as lowercase hex in the JSON header.
mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || !s.is_ascii() {
            return Err(D::Error::custom("odd-length or non-ASCII hex string"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(D::Error::custom))
            .collect()
    }
}
