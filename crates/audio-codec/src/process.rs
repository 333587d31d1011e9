//! Whole-file processing for generated sound: decode a downloaded file, trim it, measure and
//! normalise its loudness, and encode it to the format it is stored in.
//!
//! Unlike the streaming [`Encoder`](crate::Encoder), this works on a finished file held in
//! memory, so it keeps stereo as stereo and writes complete containers: a WAV with its real
//! sizes and an MP3 with the encoder's delay and padding recorded (its LAME tag), so a reader
//! gets the exact duration back. FFmpeg's muxers write those containers, and they can only
//! write to a file, so [`encode`] goes through a temporary file and returns its bytes.
//!
//! Everything here is synchronous and CPU-bound: run it off the async executor.

use std::{f64::consts::PI, path::Path, time::Duration};

use ffmpeg_next::{
    ChannelLayout, Packet, codec,
    format::{self, Sample, sample::Type},
    frame, media,
    software::resampling,
};

use crate::AudioFormat;

/// Decoded audio: interleaved f32 samples, mono or stereo.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub rate: u32,
    /// 1 (mono) or 2 (stereo, left first).
    pub channels: u16,
    /// Interleaved, full scale at ±1.0.
    pub samples: Vec<f32>,
}

impl Decoded {
    /// The number of sample frames (one sample per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    pub fn duration_seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.rate)
    }

    /// The largest absolute sample value (1.0 is full scale).
    pub fn peak(&self) -> f32 {
        self.samples.iter().fold(0.0, |peak, s| peak.max(s.abs()))
    }
}

/// Bounds on what [`decode_file`] accepts, so that a hostile file cannot take unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Decoding stops and the file is refused as soon as the audio passes this length.
    pub max_duration: Duration,
}

/// What went wrong. Messages never name the file: callers log them and show them to users.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the audio file could not be read: {0}")]
    Read(std::io::Error),
    #[error("the file is empty")]
    Empty,
    #[error("the file is not audio in a format that can be read")]
    NotAudio,
    #[error("the file has no audio stream")]
    NoAudioStream,
    #[error("the file's audio is in a codec this system cannot decode")]
    UnknownCodec,
    #[error("the file's audio stream holds no sound")]
    NoSamples,
    #[error("the audio is longer than the {limit_seconds} s allowed")]
    TooLong { limit_seconds: f64 },
    #[error("{0} is not a format audio files are stored in (wav, mp3 or flac)")]
    UnsupportedFormat(&'static str),
    #[error("{format} cannot carry {rate} Hz")]
    UnsupportedRate { format: &'static str, rate: u32 },
    #[error("audio must be mono or stereo, not {0} channels")]
    UnsupportedChannels(u16),
    #[error("FFmpeg has no {0} encoder on this system")]
    MissingEncoder(&'static str),
    #[error("the encoded audio could not go through a temporary file: {0}")]
    TemporaryFile(std::io::Error),
    #[error("FFmpeg failed: {0}")]
    Ffmpeg(#[from] ffmpeg_next::Error),
}

/// Decodes the best audio stream of the file at `path` to f32: mono stays mono, stereo stays
/// stereo and more channels are mixed down to stereo.
///
/// The sample rate is kept when MP3 can carry it (all the common rates up to 48 kHz) and
/// otherwise converted to 48 kHz, so that whatever decodes can be stored as MP3 and no odd rate
/// makes the buffer larger than 48 kHz's. A damaged packet here and there is skipped, as players
/// do; a file where nothing decodes is refused.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<Decoded, ProcessError> {
    crate::init();
    // FFmpeg reports an empty file as invalid data; saying "empty" is more useful. A named pipe
    // has no length, so only regular files are checked.
    let metadata = std::fs::metadata(path).map_err(ProcessError::Read)?;
    if metadata.is_file() && metadata.len() == 0 {
        return Err(ProcessError::Empty);
    }
    let mut input = match format::input(path) {
        Ok(input) => input,
        Err(ffmpeg_next::Error::Other { errno }) => {
            return Err(ProcessError::Read(std::io::Error::from_raw_os_error(errno)));
        }
        Err(_) => return Err(ProcessError::NotAudio),
    };
    let stream = input
        .streams()
        .best(media::Type::Audio)
        .ok_or(ProcessError::NoAudioStream)?;
    let index = stream.index();
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())?
        .decoder()
        .audio()
        .map_err(|_| ProcessError::UnknownCodec)?;

    let mut sink = Sink::new(limits);
    let mut packet = Packet::empty();
    loop {
        match packet.read(&mut input) {
            Ok(()) if packet.stream() == index => match decoder.send_packet(&packet) {
                Ok(()) => sink.receive(&mut decoder)?,
                Err(ffmpeg_next::Error::InvalidData) => sink.damaged += 1,
                Err(e) => return Err(e.into()),
            },
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => break,
            // The demuxer resynchronises after damaged data.
            Err(ffmpeg_next::Error::InvalidData) => sink.damaged += 1,
            Err(e) => return Err(e.into()),
        }
    }
    decoder.send_eof()?;
    sink.receive(&mut decoder)?;
    sink.finish()
}

/// Collects decoded frames, converting each to packed f32 and enforcing the length limit.
struct Sink {
    limits: DecodeLimits,
    resampler: Option<resampling::Context>,
    /// Fixed by the first frame, so that a stream that changes midway still comes out uniform.
    output: Option<(ChannelLayout, u32)>,
    samples: Vec<f32>,
    damaged: usize,
}

impl Sink {
    fn new(limits: DecodeLimits) -> Self {
        Self {
            limits,
            resampler: None,
            output: None,
            samples: Vec::new(),
            damaged: 0,
        }
    }

    fn receive(&mut self, decoder: &mut codec::decoder::Audio) -> Result<(), ProcessError> {
        let mut frame = frame::Audio::empty();
        loop {
            match decoder.receive_frame(&mut frame) {
                Ok(()) => self.convert(&mut frame)?,
                Err(ffmpeg_next::Error::Other { errno })
                    if errno == ffmpeg_next::util::error::EAGAIN =>
                {
                    return Ok(());
                }
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::InvalidData) => {
                    self.damaged += 1;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn convert(&mut self, frame: &mut frame::Audio) -> Result<(), ProcessError> {
        let channels = frame.channels();
        if channels == 0 || frame.rate() == 0 {
            self.damaged += 1;
            return Ok(());
        }
        // Files without a channel mask (many WAVs) decode with no layout; swresample needs one to
        // mix down, and the usual layout for the count is what players assume.
        let mut layout = frame.channel_layout();
        if layout.is_empty() || layout.channels() != i32::from(channels) {
            layout = ChannelLayout::default(i32::from(channels));
            frame.set_channel_layout(layout);
        }
        let (out_layout, out_rate) = *self.output.get_or_insert_with(|| {
            let out_layout = if channels == 1 {
                ChannelLayout::MONO
            } else {
                ChannelLayout::STEREO
            };
            let rate = frame.rate();
            let out_rate = if AudioFormat::Mp3.supports_rate(rate) {
                rate
            } else {
                48_000
            };
            (out_layout, out_rate)
        });
        let input = resampling::context::Definition {
            format: frame.format(),
            channel_layout: layout,
            rate: frame.rate(),
        };
        if self.resampler.as_ref().map(|r| *r.input()) != Some(input) {
            self.flush()?;
            self.resampler = None;
        }
        let resampler = match &mut self.resampler {
            Some(resampler) => resampler,
            empty => empty.insert(resampling::Context::get(
                input.format,
                input.channel_layout,
                input.rate,
                Sample::F32(Type::Packed),
                out_layout,
                out_rate,
            )?),
        };
        let capacity = frame.samples() * out_rate as usize / input.rate as usize + 256;
        let mut converted = frame::Audio::new(Sample::F32(Type::Packed), capacity, out_layout);
        resampler.run(frame, &mut converted)?;
        self.append(&converted)
    }

    /// Drains what the resampler still holds (only a rate conversion holds anything back).
    fn flush(&mut self) -> Result<(), ProcessError> {
        let Some((layout, _)) = self.output else {
            return Ok(());
        };
        while let Some(resampler) = self.resampler.as_mut() {
            let mut rest = frame::Audio::new(Sample::F32(Type::Packed), 4096, layout);
            resampler.flush(&mut rest)?;
            if rest.samples() == 0 {
                break;
            }
            self.append(&rest)?;
        }
        Ok(())
    }

    fn append(&mut self, converted: &frame::Audio) -> Result<(), ProcessError> {
        let Some((layout, rate)) = self.output else {
            return Ok(());
        };
        let channels = usize::try_from(layout.channels()).unwrap_or(1);
        let values = converted.samples() * channels;
        self.samples
            .extend_from_slice(&converted.plane::<f32>(0)[..values]);
        let max = self.limits.max_duration.as_secs_f64() * f64::from(rate);
        if (self.samples.len() / channels) as f64 > max {
            return Err(ProcessError::TooLong {
                limit_seconds: self.limits.max_duration.as_secs_f64(),
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Decoded, ProcessError> {
        self.flush()?;
        match self.output {
            Some((layout, rate)) if !self.samples.is_empty() => Ok(Decoded {
                rate,
                channels: u16::try_from(layout.channels()).unwrap_or(1),
                samples: self.samples,
            }),
            // Nothing decoded and the decoder complained: garbage that looked like a container.
            _ if self.damaged > 0 => Err(ProcessError::NotAudio),
            _ => Err(ProcessError::NoSamples),
        }
    }
}

/// Cuts the audio to `length` (nothing is cut when it is shorter) and fades the end out over
/// `fade_out` (at most the whole audio) with a raised-cosine curve that reaches exactly zero on
/// the last frame, so a cut never ends in a click. The fade is applied even when nothing was cut,
/// because generated audio often stops abruptly at the model's own length.
pub fn trim(decoded: &mut Decoded, length: Duration, fade_out: Duration) {
    let channels = usize::from(decoded.channels.max(1));
    let rate = f64::from(decoded.rate);
    let keep = ((length.as_secs_f64() * rate).round() as usize).min(decoded.frames());
    decoded.samples.truncate(keep * channels);
    let fade = ((fade_out.as_secs_f64() * rate).round() as usize).min(keep);
    let start = (keep - fade) * channels;
    for (i, frame) in decoded.samples[start..]
        .chunks_exact_mut(channels)
        .enumerate()
    {
        let gain = 0.5 * (1.0 + (PI * (i + 1) as f64 / fade as f64).cos());
        for sample in frame {
            *sample *= gain as f32;
        }
    }
}

/// Integrated loudness in LUFS, as ITU-R BS.1770-4 and EBU R128 define it: K-weighted, in
/// 400 ms blocks overlapping by 75 %, gated at −70 LUFS and then 10 LU below the ungated level.
/// Mono counts as one channel (a full-scale 997 Hz sine measures −3.01 LUFS); both stereo
/// channels have weight 1. `None` for silence.
///
/// Audio shorter than one block (a short click) is measured as a single block of its own length,
/// which the standard does not define, so that short sound effects can still be normalised.
pub fn integrated_loudness(decoded: &Decoded) -> Option<f64> {
    let channels = usize::from(decoded.channels);
    if channels == 0 || decoded.rate == 0 || decoded.samples.is_empty() {
        return None;
    }
    let rate = f64::from(decoded.rate);
    // Blocks are four 100 ms steps; summing the K-weighted energy per step keeps memory small.
    let step = ((rate * 0.1).round() as usize).max(1);
    let mut filters: Vec<KWeighting> = (0..channels).map(|_| KWeighting::new(rate)).collect();
    let mut steps = Vec::with_capacity(decoded.frames() / step + 1);
    let mut energy = 0.0;
    let mut total = 0.0;
    for (i, frame) in decoded.samples.chunks_exact(channels).enumerate() {
        for (filter, sample) in filters.iter_mut().zip(frame) {
            let y = filter.process(f64::from(*sample));
            energy += y * y;
        }
        if (i + 1) % step == 0 {
            steps.push(energy);
            total += energy;
            energy = 0.0;
        }
    }
    let block = 4 * step;
    let blocks: Vec<f64> = if steps.len() < 4 {
        vec![(total + energy) / decoded.frames() as f64]
    } else {
        steps
            .windows(4)
            .map(|w| w.iter().sum::<f64>() / block as f64)
            .collect()
    };
    let loudness = |mean_square: f64| -0.691 + 10.0 * mean_square.log10();
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let audible: Vec<f64> = blocks
        .into_iter()
        .filter(|&z| loudness(z) > -70.0)
        .collect();
    if audible.is_empty() {
        return None;
    }
    let relative_gate = loudness(mean(&audible)) - 10.0;
    let gated: Vec<f64> = audible
        .into_iter()
        .filter(|&z| loudness(z) > relative_gate)
        .collect();
    Some(loudness(mean(&gated)))
}

/// The result of [`normalize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalized {
    /// `None` when the audio is silent (and was left as it was).
    pub loudness_before: Option<f64>,
    pub loudness_after: Option<f64>,
    /// The gain applied, in dB (0 for silence).
    pub gain_db: f64,
    /// Whether the peak ceiling, not the target, set the gain.
    pub peak_limited: bool,
}

/// Scales the audio to `target_lufs` integrated loudness, but never so far that the sample peak
/// goes above `peak_ceiling_dbfs`. The ceiling always holds: audio that already peaks above it
/// is turned down even when the target asks for more, because a stored file that clips (or
/// clips once MP3 encoding adds its overshoot) is worse than one that is slightly quiet.
/// Silence is left as it is.
pub fn normalize(decoded: &mut Decoded, target_lufs: f64, peak_ceiling_dbfs: f64) -> Normalized {
    let before = integrated_loudness(decoded);
    let peak = f64::from(decoded.peak());
    let Some(loudness) = before.filter(|_| peak > 0.0) else {
        return Normalized {
            loudness_before: before,
            loudness_after: before,
            gain_db: 0.0,
            peak_limited: false,
        };
    };
    let wanted = target_lufs - loudness;
    let allowed = peak_ceiling_dbfs - 20.0 * peak.log10();
    let gain_db = wanted.min(allowed);
    let gain = 10f64.powf(gain_db / 20.0) as f32;
    for sample in &mut decoded.samples {
        *sample *= gain;
    }
    Normalized {
        loudness_before: before,
        loudness_after: integrated_loudness(decoded),
        gain_db,
        peak_limited: allowed < wanted,
    }
}

/// The K-weighting filter of BS.1770: a high shelf for the head's effect, then a high-pass (the
/// "RLB" curve). Coefficients are derived for any rate from the analogue prototypes (as
/// libebur128 does), giving the standard's table at 48 kHz.
#[derive(Debug, Clone, Copy)]
struct KWeighting {
    stages: [Biquad; 2],
}

impl KWeighting {
    fn new(rate: f64) -> Self {
        let shelf = {
            let (f0, gain_db, q) = (
                1_681.974_450_955_533,
                3.999_843_853_973_347,
                0.707_175_236_955_419_6,
            );
            let k = (PI * f0 / rate).tan();
            let vh = 10f64.powf(gain_db / 20.0);
            let vb = vh.powf(0.499_666_774_154_541_6);
            let a0 = 1.0 + k / q + k * k;
            Biquad::new(
                [
                    (vh + vb * k / q + k * k) / a0,
                    2.0 * (k * k - vh) / a0,
                    (vh - vb * k / q + k * k) / a0,
                ],
                [2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0],
            )
        };
        let high_pass = {
            let (f0, q) = (38.135_470_876_024_44, 0.500_327_037_323_877_3);
            let k = (PI * f0 / rate).tan();
            let a0 = 1.0 + k / q + k * k;
            Biquad::new(
                [1.0, -2.0, 1.0],
                [2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0],
            )
        };
        Self {
            stages: [shelf, high_pass],
        }
    }

    fn process(&mut self, x: f64) -> f64 {
        self.stages.iter_mut().fold(x, |x, stage| stage.process(x))
    }
}

/// One second-order section, direct form I.
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    x: [f64; 2],
    y: [f64; 2],
}

impl Biquad {
    fn new(b: [f64; 3], a: [f64; 2]) -> Self {
        Self {
            b,
            a,
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    fn process(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [x, self.x[0]];
        self.y = [y, self.y[0]];
        y
    }
}

/// How one stored format is written: FFmpeg's encoder and muxer, and the sample format fed in.
struct Target {
    codec: &'static str,
    muxer: &'static str,
    sample: Sample,
}

impl Target {
    fn of(format: AudioFormat) -> Result<Self, ProcessError> {
        Ok(match format {
            AudioFormat::Wav => Self {
                codec: "pcm_s16le",
                muxer: "wav",
                sample: Sample::I16(Type::Packed),
            },
            // LAME takes float directly, so nothing is rounded to 16 bits on the way in.
            AudioFormat::Mp3 => Self {
                codec: "libmp3lame",
                muxer: "mp3",
                sample: Sample::F32(Type::Planar),
            },
            AudioFormat::Flac => Self {
                codec: "flac",
                muxer: "flac",
                sample: Sample::I16(Type::Packed),
            },
            other => return Err(ProcessError::UnsupportedFormat(other.name())),
        })
    }
}

/// Encodes the whole audio as a complete file in `format` (wav, mp3 or flac) at the audio's own
/// rate, keeping its channels. WAV is 16-bit PCM; MP3 is 64 kb/s per channel.
pub fn encode(decoded: &Decoded, format: AudioFormat) -> Result<Vec<u8>, ProcessError> {
    let target = Target::of(format)?;
    let layout = match decoded.channels {
        1 => ChannelLayout::MONO,
        2 => ChannelLayout::STEREO,
        other => return Err(ProcessError::UnsupportedChannels(other)),
    };
    if !format.supports_rate(decoded.rate) {
        return Err(ProcessError::UnsupportedRate {
            format: format.name(),
            rate: decoded.rate,
        });
    }
    let file = tempfile::Builder::new()
        .prefix("audio-codec-")
        .suffix(&format!(".{}", format.name()))
        .tempfile()
        .map_err(ProcessError::TemporaryFile)?;
    write_file(decoded, &target, layout, file.path())?;
    std::fs::read(file.path()).map_err(ProcessError::TemporaryFile)
}

fn write_file(
    decoded: &Decoded,
    target: &Target,
    layout: ChannelLayout,
    path: &Path,
) -> Result<(), ProcessError> {
    crate::init();
    let codec = ffmpeg_next::encoder::find_by_name(target.codec)
        .ok_or(ProcessError::MissingEncoder(target.codec))?;
    let rate = i32::try_from(decoded.rate).expect("a supported rate is small");
    let mut output = format::output_as(path, target.muxer)?;
    let mut encoder = codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()?;
    encoder.set_rate(rate);
    encoder.set_format(target.sample);
    encoder.set_channel_layout(layout);
    encoder.set_time_base((1, rate));
    if target.codec == "libmp3lame" {
        encoder.set_bit_rate(64_000 * usize::from(decoded.channels));
    }
    let mut encoder = encoder.open_as(codec)?;
    let mut stream = output.add_stream(codec)?;
    stream.set_time_base((1, rate));
    stream.set_parameters(&encoder);
    output.write_header()?;
    let stream_time_base = output
        .stream(0)
        .map(|s| s.time_base())
        .ok_or(ffmpeg_next::Error::StreamNotFound)?;

    // Codecs with a fixed frame size (MP3: 1152) take a short last frame if they say so;
    // PCM takes any size.
    let frame_size = match encoder.frame_size() {
        0 => 4096,
        n => n as usize,
    };
    let short_last_frame = codec.capabilities().intersects(
        codec::capabilities::Capabilities::SMALL_LAST_FRAME
            | codec::capabilities::Capabilities::VARIABLE_FRAME_SIZE,
    );
    let channels = usize::from(decoded.channels);
    let mut pts = 0i64;
    for chunk in decoded.samples.chunks(frame_size * channels) {
        let available = chunk.len() / channels;
        let size = if short_last_frame {
            available
        } else {
            frame_size
        };
        let mut frame = frame::Audio::new(target.sample, size, layout);
        frame.set_rate(decoded.rate);
        frame.set_pts(Some(pts));
        fill(&mut frame, chunk, channels);
        pts += i64::try_from(size).expect("frame sizes are small");
        encoder.send_frame(&frame)?;
        write_packets(&mut encoder, &mut output, (1, rate), stream_time_base)?;
    }
    encoder.send_eof()?;
    write_packets(&mut encoder, &mut output, (1, rate), stream_time_base)?;
    // The trailer goes back to fill in the sizes (WAV, FLAC) and the LAME tag (MP3).
    output.write_trailer()?;
    Ok(())
}

/// Writes interleaved `samples` into `frame` in its sample format; the rest is silence.
fn fill(frame: &mut frame::Audio, samples: &[f32], channels: usize) {
    match frame.format() {
        Sample::F32(Type::Planar) => {
            for channel in 0..channels {
                let plane = frame.plane_mut::<f32>(channel);
                plane.fill(0.0);
                for (out, sample) in plane
                    .iter_mut()
                    .zip(samples.iter().skip(channel).step_by(channels))
                {
                    *out = *sample;
                }
            }
        }
        _ => {
            let plane = frame.plane_mut::<i16>(0);
            plane.fill(0);
            for (out, sample) in plane.iter_mut().zip(samples) {
                *out = (sample.clamp(-1.0, 1.0) * 32_767.0).round() as i16;
            }
        }
    }
}

fn write_packets(
    encoder: &mut codec::encoder::Audio,
    output: &mut format::context::Output,
    encoder_time_base: (i32, i32),
    stream_time_base: ffmpeg_next::Rational,
) -> Result<(), ProcessError> {
    let mut packet = Packet::empty();
    loop {
        match encoder.receive_packet(&mut packet) {
            Ok(()) => {
                packet.set_stream(0);
                packet.rescale_ts(encoder_time_base, stream_time_base);
                packet.write_interleaved(output)?;
            }
            Err(ffmpeg_next::Error::Other { errno })
                if errno == ffmpeg_next::util::error::EAGAIN =>
            {
                return Ok(());
            }
            Err(ffmpeg_next::Error::Eof) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BS.1770-4, table 1 and table 2: the K-weighting coefficients at 48 kHz.
    #[test]
    fn k_weighting_matches_the_standard_at_48khz() {
        let k = KWeighting::new(48_000.0);
        let [shelf, high_pass] = k.stages;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-8;
        assert!(close(shelf.b[0], 1.535_124_859_586_97), "{:?}", shelf.b);
        assert!(close(shelf.b[1], -2.691_696_189_406_38), "{:?}", shelf.b);
        assert!(close(shelf.b[2], 1.198_392_810_852_85), "{:?}", shelf.b);
        assert!(close(shelf.a[0], -1.690_659_293_182_41), "{:?}", shelf.a);
        assert!(close(shelf.a[1], 0.732_480_774_215_85), "{:?}", shelf.a);
        assert_eq!(high_pass.b, [1.0, -2.0, 1.0]);
        assert!(
            close(high_pass.a[0], -1.990_047_454_833_98),
            "{:?}",
            high_pass.a
        );
        assert!(
            close(high_pass.a[1], 0.990_072_250_366_21),
            "{:?}",
            high_pass.a
        );
    }
}
