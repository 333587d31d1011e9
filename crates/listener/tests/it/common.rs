//! Finding (and if needed fetching) the model, and reading WAV files.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard, OnceLock},
};

use listener::Listener;

/// The model folder: `LISTENER_MODEL_DIR`, or the default the fetch script uses. The script is
/// run when the folder is incomplete (it does nothing when all files are present and checked),
/// so a fresh machine needs no separate set-up step.
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("LISTENER_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                    .join(".cache/sonora/whisper-tiny-en")
            });
        let complete = ["model.bin", "config.json", "vocabulary.txt"]
            .iter()
            .all(|f| dir.join(f).is_file());
        if !complete {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-model.sh");
            let status = Command::new("sh")
                .arg(&script)
                .env("LISTENER_MODEL_DIR", &dir)
                .status()
                .expect("run fetch-model.sh");
            assert!(status.success(), "fetch-model.sh failed: {status}");
        }
        dir
    })
}

/// One listener per test process, loaded once; transcription needs `&mut`, hence the mutex.
pub fn listener() -> MutexGuard<'static, Listener> {
    static LISTENER: OnceLock<Mutex<Listener>> = OnceLock::new();
    LISTENER
        .get_or_init(|| Mutex::new(Listener::load(model_dir()).expect("load the listener")))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a 16-bit PCM mono WAV file (what espeak-ng writes) into samples in [-1, 1] and its rate.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let bytes = std::fs::read(path).expect("read wav");
    assert_eq!(&bytes[..4], b"RIFF", "not a RIFF file");
    assert_eq!(&bytes[8..12], b"WAVE", "not a WAVE file");
    let mut pos = 12;
    let mut rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        match id {
            b"fmt " => {
                let format = u16::from_le_bytes([bytes[body], bytes[body + 1]]);
                let channels = u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]);
                let bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
                assert_eq!(
                    (format, channels, bits),
                    (1, 1, 16),
                    "16-bit PCM mono expected"
                );
                rate = Some(u32::from_le_bytes(
                    bytes[body + 4..body + 8].try_into().unwrap(),
                ));
            }
            b"data" => {
                // A streaming writer may leave the size unset; the data then runs to the end.
                let end = body.saturating_add(len).min(bytes.len());
                let samples = bytes[body..end]
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect();
                return (samples, rate.expect("fmt chunk before data"));
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// Speech for `text` from the espeak-ng program (run as a separate process: it is GPL).
pub fn espeak(text: &str) -> (Vec<f32>, u32) {
    let dir = std::env::temp_dir().join(format!("listener-espeak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:016x}.wav", fxhash(text)));
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .expect("run espeak-ng (Debian package espeak-ng)");
    assert!(status.success(), "espeak-ng failed: {status}");
    let out = read_wav(&path);
    let _ = std::fs::remove_file(&path);
    out
}

fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
