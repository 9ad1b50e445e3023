//! Batched transcription: the 30 s windows of every input go into one queue; the encoder and the
//! decoder take up to `max_batch` of them at once (one decoder session, every window's sequences
//! in lockstep, finished windows leaving it), and each input is reported, in input order, once
//! all its windows are done. A loader thread reads and converts the next inputs meanwhile.
use super::{Audio, Segment, Transcriber, Transcript, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD};
use crate::audio::{self, Window};
use crate::backends::Backend;
use crate::decoding::{DecodeResult, Decoder};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::Instant;

/// One input as the loader hands it over: its windows and seconds of audio, or why it failed.
struct Loaded {
    input: usize,
    start: Instant,
    windows: Result<(Vec<Window>, f64)>,
}

fn load(input: Audio<'_>, n_mels: usize) -> Result<(Vec<Window>, f64)> {
    let owned;
    let samples = match input {
        Audio::File(path) => {
            owned = audio::load_audio(path)?;
            owned.as_slice()
        }
        Audio::Samples(s) => s,
    };
    let windows = audio::transcribe_windows(samples, n_mels);
    let windows = match input {
        Audio::File(path) => windows.with_context(|| path.display().to_string())?,
        Audio::Samples(_) => windows?,
    };
    Ok((windows, samples.len() as f64 / audio::SAMPLE_RATE as f64))
}

/// A window waiting in the queue.
struct Job {
    input: usize,
    /// Its index among its input's windows.
    index: usize,
    window: Window,
}

/// An input whose windows are under way.
struct Pending {
    start: Instant,
    duration: f64,
    language: Option<String>,
    segments: Vec<Option<Segment>>,
    left: usize,
}

/// Inputs in flight and the results waiting for their turn to be reported.
struct Book<F> {
    pending: HashMap<usize, Pending>,
    results: Vec<Option<Result<Transcript>>>,
    next: usize,
    on_done: F,
    /// `on_done` returned an error: everything stops.
    stopped: bool,
}

impl<F: FnMut(usize, Result<Transcript>) -> Result<()>> Book<F> {
    /// Input `i` is finished (or failed); reports every finished input that is next in order.
    fn finish(&mut self, i: usize, r: Result<Transcript>) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.pending.remove(&i);
        if self.results[i].is_none() {
            self.results[i] = Some(r);
        }
        while let Some(r) = self.results.get_mut(self.next).and_then(|r| r.take()) {
            let i = self.next;
            self.next += 1;
            if let Err(e) = (self.on_done)(i, r) {
                self.stopped = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn failed(&self, i: usize) -> bool {
        !self.pending.contains_key(&i)
    }

    /// Every input with a window in `jobs` that is still pending fails with `e`.
    fn fail_all(&mut self, jobs: &[Job], e: &anyhow::Error) -> Result<()> {
        for j in jobs {
            if !self.failed(j.input) {
                self.finish(j.input, Err(anyhow!("{e:#}")))?;
            }
        }
        Ok(())
    }
}

impl<B: Backend> Transcriber<B> {
    /// Transcribes many inputs, batching 30 s windows across them: up to `max_batch` windows go
    /// through the encoder together and are decoded together in one session (greedy: one
    /// sequence per window, beam search: `beam_size`), windows leaving it as they finish.
    /// Windows are independent (no conditioning on earlier text, no timestamps); multilingual
    /// models detect the language once per input, on its first window.
    ///
    /// `on_done(i, result)` is called once per input, in input order, as soon as input `i` and
    /// every input before it are done; a bad input is reported as its error and the others go
    /// on. An error returned by `on_done` stops the work and is returned. Each result is what
    /// transcribing that input alone gives: the same tokens on the CPU backend; on the GPU, fp16
    /// products over other row counts can flip a near-tie (tiny.en, 249 inputs: 247 to 249 equal).
    /// `time_taken` is the time from when its audio began loading to when its last window was
    /// decoded.
    pub fn transcribe_many(
        &self,
        inputs: &[Audio<'_>],
        max_batch: usize,
        on_done: impl FnMut(usize, Result<Transcript>) -> Result<()>,
    ) -> Result<()> {
        let n_seq = self.options.beam_size.unwrap_or(1).max(1);
        let mut per_batch = max_batch.max(1);
        if let Some(max) = self.backend.max_sequences() {
            per_batch = per_batch.min(max / n_seq).max(1);
        }
        let n_mels = self.backend.config().n_mels;
        let mut book = Book { pending: HashMap::new(), results: (0..inputs.len()).map(|_| None).collect(), next: 0, on_done, stopped: false };
        std::thread::scope(|scope| {
            // Loads inputs a chunk at a time (the chunk's files in parallel: decoding, resampling and
            // the log-mel take longer than a small model's GPU work), handing them over in order.
            let chunk = per_batch.clamp(2, 16);
            let (tx, rx) = mpsc::sync_channel::<Loaded>(chunk);
            let times = &self.times;
            scope.spawn(move || {
                for (c, part) in inputs.chunks(chunk).enumerate() {
                    let start = Instant::now();
                    let loaded: Vec<Loaded> = part
                        .par_iter()
                        .enumerate()
                        .map(|(j, &audio)| {
                            let t = Instant::now();
                            let windows = load(audio, n_mels);
                            if let Ok(mut p) = times.lock() {
                                p.load_s += t.elapsed().as_secs_f64();
                            }
                            Loaded { input: c * chunk + j, start, windows }
                        })
                        .collect();
                    for l in loaded {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                }
            });
            let result = self.run_queue(&rx, per_batch, &mut book);
            drop(rx); // the loader stops at its next input
            result
        })
    }

    fn run_queue<F: FnMut(usize, Result<Transcript>) -> Result<()>>(
        &self,
        rx: &mpsc::Receiver<Loaded>,
        per_batch: usize,
        book: &mut Book<F>,
    ) -> Result<()> {
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut loader_done = false;
        let mut decoders: HashMap<String, Decoder> = HashMap::new();
        loop {
            while queue.len() < per_batch && !loader_done {
                let Ok(loaded) = rx.recv() else {
                    loader_done = true;
                    break;
                };
                let i = loaded.input;
                match loaded.windows {
                    Err(e) => book.finish(i, Err(e))?,
                    Ok((windows, duration)) => {
                        let multilingual = self.backend.config().multilingual;
                        let language = match &self.options.language {
                            Some(l) => Some(l.clone()),
                            None if !multilingual => Some("en".to_string()),
                            None => None,
                        };
                        let n = windows.len();
                        let p = Pending { start: loaded.start, duration, language, segments: (0..n).map(|_| None).collect(), left: n };
                        if n == 0 {
                            book.finish(i, self.assemble(p))?;
                            continue;
                        }
                        book.pending.insert(i, p);
                        queue.extend(windows.into_iter().enumerate().map(|(index, window)| Job { input: i, index, window }));
                    }
                }
            }
            // Windows of inputs that already failed are skipped.
            let mut jobs = Vec::with_capacity(per_batch);
            while jobs.len() < per_batch {
                match queue.pop_front() {
                    Some(j) if book.failed(j.input) => {}
                    Some(j) => jobs.push(j),
                    None => break,
                }
            }
            if jobs.is_empty() {
                if loader_done && queue.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if let Err(e) = self.run_batch(&jobs, &mut decoders, book) {
                if book.stopped {
                    return Err(e);
                }
                book.fail_all(&jobs, &e)?;
            }
        }
    }

    /// Encodes and decodes one batch of windows; finished inputs are reported as they complete.
    /// An error of `on_done` comes back with `book.stopped` set.
    fn run_batch<F: FnMut(usize, Result<Transcript>) -> Result<()>>(
        &self,
        jobs: &[Job],
        decoders: &mut HashMap<String, Decoder>,
        book: &mut Book<F>,
    ) -> Result<()> {
        let mels: Vec<&[f32]> = jobs.iter().map(|j| j.window.mel.data.as_slice()).collect();
        let t = Instant::now();
        let features = self.backend.encode_batch(&mels)?;
        self.add_time(|p| p.encode_s += t.elapsed().as_secs_f64());
        let t = Instant::now();
        let result = self.decode_batch(jobs, &features, decoders, book);
        self.add_time(|p| p.decode_s += t.elapsed().as_secs_f64());
        result
    }

    /// [`Self::run_batch`]'s decoding of the encoded windows.
    fn decode_batch<F: FnMut(usize, Result<Transcript>) -> Result<()>>(
        &self,
        jobs: &[Job],
        features: &[B::Features],
        decoders: &mut HashMap<String, Decoder>,
        book: &mut Book<F>,
    ) -> Result<()> {
        let config = self.backend.config();
        if features.len() != jobs.len() {
            bail!("internal: the encoder returned {} windows of {}", features.len(), jobs.len());
        }
        // transcribe() detects the language once, on an input's first window.
        let detect: Vec<usize> = (0..jobs.len())
            .filter(|&w| jobs[w].index == 0 && book.pending.get(&jobs[w].input).is_some_and(|p| p.language.is_none()))
            .collect();
        if !detect.is_empty() {
            let refs: Vec<&B::Features> = detect.iter().map(|&w| &features[w]).collect();
            let mut session = self.backend.session_many(&refs, 1)?;
            let languages = Decoder::detect_languages(&self.tokenizer, session.as_mut())?;
            for (&w, lang) in detect.iter().zip(languages) {
                if let Some(p) = book.pending.get_mut(&jobs[w].input) {
                    p.language = Some(lang);
                }
            }
        }
        // Each window's decoder (prompts differ by language only).
        let mut chosen: Vec<usize> = Vec::with_capacity(jobs.len());
        for (w, job) in jobs.iter().enumerate() {
            let Some(lang) = book.pending.get(&job.input).and_then(|p| p.language.clone()) else {
                continue; // failed meanwhile, or no language (cannot happen: the first window comes first)
            };
            if !decoders.contains_key(&lang) {
                let options = crate::decoding::DecodeOptions { language: Some(lang.clone()), ..self.options.clone() };
                match Decoder::new(config, &self.tokenizer, &options) {
                    Ok(d) => {
                        decoders.insert(lang.clone(), d);
                    }
                    Err(e) => {
                        book.finish(job.input, Err(e))?;
                        continue;
                    }
                }
            }
            chosen.push(w);
        }
        if chosen.is_empty() {
            return Ok(());
        }
        let langs: Vec<String> =
            chosen.iter().map(|&w| book.pending.get(&jobs[w].input).and_then(|p| p.language.clone()).unwrap_or_default()).collect();
        let prompts: Vec<&[u32]> = langs.iter().map(|l| decoders[l].initial_tokens.as_slice()).collect();
        let decoder = &decoders[&langs[0]];
        let refs: Vec<&B::Features> = chosen.iter().map(|&w| &features[w]).collect();
        let mut session = self.backend.session_many(&refs, decoder.n_seq())?;
        let mut stop: Option<anyhow::Error> = None;
        decoder.run_many(session.as_mut(), &prompts, &mut |k, result| {
            let job = &jobs[chosen[k]];
            if let Err(e) = self.window_done(job, result, book) {
                stop.get_or_insert(e);
            }
        })?;
        match stop {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records a decoded window; reports its input if that was the last one.
    fn window_done<F: FnMut(usize, Result<Transcript>) -> Result<()>>(
        &self,
        job: &Job,
        result: DecodeResult,
        book: &mut Book<F>,
    ) -> Result<()> {
        let Some(p) = book.pending.get_mut(&job.input) else { return Ok(()) };
        let w = &job.window;
        let seconds = |frames: usize| frames as f64 * audio::HOP_LENGTH as f64 / audio::SAMPLE_RATE as f64;
        // transcribe() skips a window that looks like silence.
        let silent = result.no_speech_prob > NO_SPEECH_THRESHOLD && result.avg_logprob <= LOGPROB_THRESHOLD;
        let tokens = if silent { vec![] } else { result.tokens };
        let segment = match self.tokenizer.decode(&tokens) {
            Ok(text) => Segment {
                start: seconds(w.start_frame),
                end: seconds(w.start_frame + w.content_frames),
                text,
                tokens,
                avg_logprob: result.avg_logprob,
                no_speech_prob: result.no_speech_prob,
            },
            Err(e) => return book.finish(job.input, Err(e)),
        };
        if let Some(slot) = p.segments.get_mut(job.index) {
            if slot.replace(segment).is_none() {
                p.left -= 1;
            }
        }
        if p.left == 0 {
            if let Some(p) = book.pending.remove(&job.input) {
                let t = self.assemble(p);
                book.finish(job.input, t)?;
            }
        }
        Ok(())
    }

    fn assemble(&self, p: Pending) -> Result<Transcript> {
        let segments: Vec<Segment> = p.segments.into_iter().flatten().collect();
        let tokens: Vec<u32> = segments.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        Ok(Transcript {
            text: self.tokenizer.decode(&tokens)?,
            tokens,
            language: p.language.unwrap_or_default(),
            segments,
            duration: p.duration,
            time_taken: p.start.elapsed().as_secs_f64(),
        })
    }
}
