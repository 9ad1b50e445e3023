//! The utterances of an evaluation set: the LibriSpeech layout
//! (`<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac` beside `<spk>-<chapter>.trans.txt`), and
//! any folder with a `trans.txt` of `<id> <text>` lines whose audio is named by id (in the folder
//! or below it, e.g. LJSpeech's `wavs/`). A LibriSpeech utterance's subset is the folder above its
//! speaker folders (`test-clean`); a `trans.txt` folder's subset is the folder's name.
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Audio the decoder reads, in the order an id's file is looked for.
pub const AUDIO_EXTENSIONS: &[&str] = &["flac", "wav", "mp3", "ogg"];

/// Folders deeper than this below the root are not searched (and symlink loops end).
const MAX_DEPTH: usize = 12;

#[derive(Clone, Debug)]
pub struct Utterance {
    pub subset: String,
    pub id: String,
    pub audio: PathBuf,
    pub reference: String,
}

impl Utterance {
    /// The key results are matched by.
    pub fn key(&self) -> (String, String) {
        (self.subset.clone(), self.id.clone())
    }
}

/// Every utterance under `root`, sorted by subset, then id.
pub fn discover(root: &Path) -> Result<Vec<Utterance>> {
    let meta = std::fs::metadata(root).with_context(|| format!("{}: cannot read directory", root.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let generic = dir.join("trans.txt");
        if generic.is_file() {
            // The folder and everything below it belong to this set.
            out.extend(read_generic(&dir, &generic)?);
            continue;
        }
        let entries = std::fs::read_dir(&dir).with_context(|| format!("{}: cannot read directory", dir.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("{}: cannot read directory", dir.display()))?.path();
            if path.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if let Some(subset) = librispeech_subset(&path) {
                out.extend(read_chapter(&path, &subset)?);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no transcripts found (LibriSpeech <subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt, or a folder with trans.txt)",
            root.display()
        );
    }
    out.sort_by(|a, b| (&a.subset, &a.id).cmp(&(&b.subset, &b.id)));
    for pair in out.windows(2) {
        if pair[0].key() == pair[1].key() {
            bail!(
                "{}: utterance {} of {} is listed twice ({} and {})",
                root.display(),
                pair[0].id,
                pair[0].subset,
                pair[0].audio.display(),
                pair[1].audio.display()
            );
        }
    }
    Ok(out)
}

/// Keeps the subsets named in `wanted` (comma-separated); an unknown name is an error.
pub fn select_subsets(utts: Vec<Utterance>, wanted: &str, root: &Path) -> Result<Vec<Utterance>> {
    let have: BTreeSet<&str> = utts.iter().map(|u| u.subset.as_str()).collect();
    let want: BTreeSet<&str> = wanted.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if want.is_empty() {
        bail!("--subset names no subset");
    }
    if let Some(missing) = want.iter().find(|s| !have.contains(*s)) {
        bail!(
            "{}: no subset {missing:?} here (found: {})",
            root.display(),
            have.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    Ok(utts.into_iter().filter(|u| want.contains(&u.subset)).collect())
}

/// The subset of `<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`, or None for any other file
/// (such as LibriSpeech's complete `transcripts/test-clean.trans.txt`, which has no audio beside it).
fn librispeech_subset(path: &Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".trans.txt")?;
    // Names from the resolved path, so that roots such as "." or ".." work too.
    let path = std::fs::canonicalize(path).ok()?;
    let chapter_dir = path.parent()?;
    let speaker_dir = chapter_dir.parent()?;
    let (spk, chapter) = stem.split_once('-')?;
    if chapter_dir.file_name()?.to_str()? != chapter || speaker_dir.file_name()?.to_str()? != spk {
        return None;
    }
    Some(speaker_dir.parent()?.file_name()?.to_string_lossy().into_owned())
}

/// `(line number, id, text)` of each non-empty line of a transcript file.
fn transcript_lines(path: &Path) -> Result<Vec<(usize, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read transcript", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (id, reference) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let ok = !id.is_empty()
            && id != "."
            && id != ".."
            && !id.contains(['/', '\\'])
            && !id.chars().any(char::is_control);
        if !ok {
            bail!("{} line {}: {id:?} is not an utterance id", path.display(), i + 1);
        }
        out.push((i + 1, id.to_string(), reference.trim().to_string()));
    }
    Ok(out)
}

/// One LibriSpeech chapter: its audio lies beside the transcript.
fn read_chapter(path: &Path, subset: &str) -> Result<Vec<Utterance>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    transcript_lines(path)?
        .into_iter()
        .map(|(line, id, reference)| {
            let audio = AUDIO_EXTENSIONS
                .iter()
                .map(|ext| dir.join(format!("{id}.{ext}")))
                .find(|p| p.is_file());
            match audio {
                Some(audio) => Ok(Utterance { subset: subset.to_string(), id, audio, reference }),
                None => bail!("{} line {line}: no audio for {id} ({}/{id}.flac is missing)", path.display(), dir.display()),
            }
        })
        .collect()
}

/// A folder with `trans.txt`: audio named by id anywhere below the folder.
fn read_generic(dir: &Path, path: &Path) -> Result<Vec<Utterance>> {
    let subset = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "default".into());
    let mut audio: BTreeMap<String, PathBuf> = BTreeMap::new();
    index_audio(dir, 0, &mut audio)?;
    transcript_lines(path)?
        .into_iter()
        .map(|(line, id, reference)| match audio.get(&id) {
            Some(a) => Ok(Utterance { subset: subset.clone(), id, audio: a.clone(), reference }),
            None => bail!("{} line {line}: no audio file named {id} under {}", path.display(), dir.display()),
        })
        .collect()
}

/// Audio files below `dir` by file stem; the first extension of `AUDIO_EXTENSIONS` wins.
fn index_audio(dir: &Path, depth: usize, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read directory", dir.display()))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        paths.push(entry.with_context(|| format!("{}: cannot read directory", dir.display()))?.path());
    }
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if depth < MAX_DEPTH {
                index_audio(&path, depth + 1, out)?;
            }
            continue;
        }
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else { continue };
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        let Some(rank) = AUDIO_EXTENSIONS.iter().position(|e| *e == ext) else { continue };
        let stem = stem.to_string_lossy().into_owned();
        let better = match out.get(&stem) {
            None => true,
            Some(old) => {
                let old_ext = old.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
                AUDIO_EXTENSIONS.iter().position(|e| *e == old_ext).is_none_or(|r| rank < r)
            }
        };
        if better {
            out.insert(stem, path);
        }
    }
    Ok(())
}
