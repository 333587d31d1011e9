//! Predictions and their output files, in memory: this is a development simulator, and a
//! restart forgetting everything is what a fresh Replicate account looks like. Both are bounded:
//! creating one prediction more than `SIMULATOR_MAX_PREDICTIONS` forgets the oldest, with its
//! file, and a file that takes the files past `SIMULATOR_MAX_STORED_BYTES` removes the data of
//! the oldest ones early (`data_removed`, as after `SIMULATOR_FILE_RETENTION`).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound::{self, Excluded, Unbounded},
    sync::{Arc, Mutex},
};

use audio_codec::AudioFormat;
use chrono::{DateTime, Utc};

use crate::prediction::{Prediction, PredictionId};

/// An output file, whole.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The prediction's creation sequence number: files are evicted oldest first.
    pub seq: u64,
    pub bytes: Arc<Vec<u8>>,
    pub format: AudioFormat,
    /// Downloads so far, for the broken-download knob.
    pub downloads: u32,
}

#[derive(Default)]
struct Inner {
    predictions: HashMap<PredictionId, Prediction>,
    /// Creation sequence number to id, oldest first.
    order: BTreeMap<u64, PredictionId>,
    next_seq: u64,
    files: HashMap<PredictionId, StoredFile>,
    /// The files by their prediction's sequence number, oldest first.
    file_order: BTreeMap<u64, PredictionId>,
    file_bytes: usize,
}

impl Inner {
    fn remove_file(&mut self, id: &PredictionId) {
        if let Some(file) = self.files.remove(id) {
            self.file_order.remove(&file.seq);
            self.file_bytes -= file.bytes.len();
        }
    }

    /// Deletes a prediction's file and its input, output and logs, as Replicate's retention does.
    fn remove_data(&mut self, id: &PredictionId) {
        self.remove_file(id);
        if let Some(prediction) = self.predictions.get_mut(id) {
            prediction.data_removed = true;
            prediction.output = None;
            prediction.input = serde_json::Value::Object(serde_json::Map::new());
            prediction.logs.clear();
        }
    }
}

/// Which way a listing cursor points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Predictions created before the one with this sequence number (older).
    Before(u64),
    /// Predictions created after it (newer).
    After(u64),
}

impl Cursor {
    /// Cursors are `b<seq>` or `a<seq>`; Replicate's are opaque, and so are these to clients.
    pub fn parse(raw: &str) -> Option<Self> {
        let (kind, seq) = raw.split_at_checked(1)?;
        let seq = seq.parse().ok()?;
        match kind {
            "b" => Some(Self::Before(seq)),
            "a" => Some(Self::After(seq)),
            _ => None,
        }
    }

    pub fn encode(self) -> String {
        match self {
            Self::Before(seq) => format!("b{seq}"),
            Self::After(seq) => format!("a{seq}"),
        }
    }
}

/// One page of predictions, newest first.
#[derive(Debug)]
pub struct Page {
    pub results: Vec<Prediction>,
    pub next: Option<Cursor>,
    pub previous: Option<Cursor>,
}

/// The simulator's memory. The lock is never held across an await.
pub struct Store {
    inner: Mutex<Inner>,
    capacity: usize,
    max_file_bytes: usize,
}

impl Store {
    pub fn new(capacity: usize, max_file_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity,
            max_file_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a new prediction built by `make` from its sequence number, forgetting the oldest
    /// ones beyond the capacity.
    pub fn insert(&self, make: impl FnOnce(u64) -> Prediction) -> Prediction {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let prediction = make(seq);
        inner.order.insert(seq, prediction.id.clone());
        inner
            .predictions
            .insert(prediction.id.clone(), prediction.clone());
        while inner.order.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.remove_file(&oldest);
            inner.predictions.remove(&oldest);
            tracing::info!(prediction_id = %oldest, "forgot the oldest prediction: the store is full");
        }
        prediction
    }

    pub fn get(&self, id: &PredictionId) -> Option<Prediction> {
        self.lock().predictions.get(id).cloned()
    }

    /// Applies `change` to a prediction that has not finished yet, and returns it as changed;
    /// `None` when it is gone or already finished, so a cancel and a completion never both win.
    pub fn update_running(
        &self,
        id: &PredictionId,
        change: impl FnOnce(&mut Prediction),
    ) -> Option<Prediction> {
        let mut inner = self.lock();
        let prediction = inner.predictions.get_mut(id)?;
        if prediction.status.is_terminal() {
            return None;
        }
        change(prediction);
        Some(prediction.clone())
    }

    /// Finishes a prediction with its output file, if it is still running.
    pub fn complete_with_file(
        &self,
        id: &PredictionId,
        file: StoredFile,
        change: impl FnOnce(&mut Prediction),
    ) -> Option<Prediction> {
        let mut inner = self.lock();
        let prediction = inner.predictions.get_mut(id)?;
        if prediction.status.is_terminal() {
            return None;
        }
        change(prediction);
        inner.file_bytes += file.bytes.len();
        inner.file_order.insert(file.seq, id.clone());
        inner.files.insert(id.clone(), file);
        while inner.file_bytes > self.max_file_bytes {
            let Some((_, oldest)) = inner.file_order.first_key_value() else {
                break;
            };
            // A file larger than the bound on its own is still kept until the next one arrives.
            if oldest == id {
                break;
            }
            let oldest = oldest.clone();
            tracing::info!(prediction_id = %oldest, "removed the oldest file early: the files are at their size bound");
            inner.remove_data(&oldest);
        }
        inner.predictions.get(id).cloned()
    }

    /// Deletes a prediction's file and its input, output and logs, as Replicate's retention does.
    pub fn remove_data(&self, id: &PredictionId) {
        self.lock().remove_data(id);
    }

    /// A file and the number of this download (1 for the first).
    pub fn download(&self, id: &PredictionId) -> Option<(StoredFile, u32)> {
        let mut inner = self.lock();
        let file = inner.files.get_mut(id)?;
        file.downloads += 1;
        Some((file.clone(), file.downloads))
    }

    /// A page of at most `size` predictions that pass `filter`, newest first.
    pub fn list(&self, cursor: Option<Cursor>, size: usize, filter: &Filter) -> Page {
        let inner = self.lock();
        // The sequence numbers of the predictions the filter lets through, in `range`.
        let passing = |range: (Bound<u64>, Bound<u64>)| {
            inner
                .order
                .range(range)
                .filter(|(_, id)| inner.predictions.get(*id).is_some_and(|p| filter.passes(p)))
                .map(|(seq, _)| *seq)
        };
        let seqs: Vec<u64> = match cursor {
            None => passing((Unbounded, Unbounded)).rev().take(size).collect(),
            Some(Cursor::Before(seq)) => passing((Unbounded, Excluded(seq)))
                .rev()
                .take(size)
                .collect(),
            Some(Cursor::After(seq)) => {
                let mut newer: Vec<u64> = passing((Excluded(seq), Unbounded)).take(size).collect();
                newer.reverse();
                newer
            }
        };
        let (Some(&newest), Some(&oldest)) = (seqs.first(), seqs.last()) else {
            return Page {
                results: Vec::new(),
                next: None,
                previous: None,
            };
        };
        let next = passing((Unbounded, Excluded(oldest)))
            .next()
            .map(|_| Cursor::Before(oldest));
        let previous = passing((Excluded(newest), Unbounded))
            .next()
            .map(|_| Cursor::After(newest));
        let results = seqs
            .iter()
            .filter_map(|seq| inner.order.get(seq))
            .filter_map(|id| inner.predictions.get(id).cloned())
            .collect();
        Page {
            results,
            next,
            previous,
        }
    }
}

/// The listing's `created_after` and `created_before` bounds, both exclusive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

impl Filter {
    fn passes(&self, prediction: &Prediction) -> bool {
        self.created_after.is_none_or(|t| prediction.created_at > t)
            && self
                .created_before
                .is_none_or(|t| prediction.created_at < t)
    }
}
