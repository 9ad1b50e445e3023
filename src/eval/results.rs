//! `results.jsonl`: one line per utterance, appended and flushed as each completes, so that a
//! killed run keeps everything it finished and `--resume` can go on from there.
use super::align::Edits;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    pub subset: String,
    pub audio: String,
    /// The dataset transcript and the system's text, as they are.
    pub reference: String,
    pub hypothesis: String,
    /// Both through openai-whisper's `EnglishTextNormalizer`; the WER compares these.
    pub normalized_ref: String,
    pub normalized_hyp: String,
    /// Substitutions, deletions, insertions and reference words (flattened: the JSON keys are
    /// `substitutions`, `deletions`, `insertions`, `ref_words`).
    #[serde(flatten)]
    pub edits: Edits,
    /// substitutions + deletions + insertions.
    pub word_edits: usize,
    pub audio_seconds: f64,
    /// Decoded tokens (prompt and end of text excluded).
    pub tokens: Vec<u32>,
    /// Wall time from the previous completion (or the start of decoding) to this one; these add up
    /// to the decoding wall time however many utterances are in flight at once.
    pub wall_seconds: f64,
}

impl Record {
    pub fn key(&self) -> (String, String) {
        (self.subset.clone(), self.id.clone())
    }
}

/// Reads the complete lines of a results file. A last line without its newline is what a kill
/// during a write leaves: it is dropped (and cut off the file when `repair` is set). Any other
/// line that is not a record is an error naming the file and line.
pub fn read(path: &Path, repair: bool) -> Result<Vec<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() && repair {
        let f = OpenOptions::new().write(true).open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        f.set_len(complete as u64)
            .with_context(|| format!("{}: cannot drop the unfinished last line", path.display()))?;
    }
    let text = std::str::from_utf8(&bytes[..complete]).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a whisper-trt results line", path.display(), i + 1))?;
        out.push(r);
    }
    Ok(out)
}

/// Appends records, one flushed line each.
pub struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens `path` for appending (`resume`) or creates it; an existing non-empty file without
    /// `resume` is refused rather than overwritten.
    pub fn open(path: &Path, resume: bool) -> Result<Self> {
        if !resume && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            bail!("{}: results of an earlier run are here: pass --resume to go on with them, or choose another --output", path.display());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for writing", path.display()))?;
        Ok(Writer { file, path: path.to_path_buf() })
    }

    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        // One write of the whole line: a kill leaves at most this line unfinished.
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}
