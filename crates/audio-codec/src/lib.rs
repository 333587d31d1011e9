//! Streaming audio encoding with FFmpeg (ffmpeg-next): mono f32 samples in, the bytes of a
//! playable stream out, piece by piece as the samples arrive.
//!
//! Formats ([`AudioFormat`]): raw `pcm16` (little-endian), `wav` (PCM16), `mp3` (libmp3lame),
//! `opus` (libopus in Ogg), `flac`, `aac` (FFmpeg's native AAC-LC encoder in ADTS), and `mulaw`
//! (G.711 µ-law at 8 kHz, raw, for telephony). Samples are resampled and converted with
//! swresample; the codecs are FFmpeg's (all LGPL; AAC is FFmpeg's own encoder, never the non-free
//! libfdk-aac). The thin container layers (the WAV header, FLAC's stream header, Ogg pages for
//! Opus, ADTS headers for AAC) are written here, because they are small and FFmpeg's muxers can
//! only write through raw IO callbacks.
//!
//! Streams have no known length when they start: the WAV header says "to the end of the stream"
//! (0xFFFFFFFF sizes) and FLAC's header leaves the total sample count unknown, as streaming
//! encoders do; decoders read to the end.
//!
//! An [`Encoder`] is not `Send` (swresample's context is not): create and use it on one thread,
//! the one that makes the samples. The encoder does no IO.
//!
//! [`process`] works on whole files instead: it decodes a downloaded file, trims it, normalises
//! its loudness and encodes it as a complete WAV, MP3 or FLAC file. It reads the file it is given
//! and writes through a temporary file, because FFmpeg's demuxers and muxers work on files.

mod ogg;
pub mod process;

use ffmpeg_next::{
    ChannelLayout, Packet, codec,
    format::{Sample, sample::Type},
    frame,
    software::resampling,
};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioFormat {
    Pcm16,
    Wav,
    Mp3,
    Opus,
    Flac,
    Mulaw,
    /// AAC-LC in ADTS: every packet carries its own 7-byte header, so the stream can be cut
    /// anywhere between packets and still plays.
    Aac,
}

impl AudioFormat {
    pub const ALL: [AudioFormat; 7] = [
        Self::Pcm16,
        Self::Wav,
        Self::Mp3,
        Self::Opus,
        Self::Flac,
        Self::Mulaw,
        Self::Aac,
    ];

    /// Parses a format name as the API spells it.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "pcm16" | "pcm" | "pcm_s16le" => Self::Pcm16,
            "wav" => Self::Wav,
            "mp3" => Self::Mp3,
            "opus" | "ogg" => Self::Opus,
            "flac" => Self::Flac,
            "mulaw" | "ulaw" | "mu-law" => Self::Mulaw,
            "aac" => Self::Aac,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pcm16 => "pcm16",
            Self::Wav => "wav",
            Self::Mp3 => "mp3",
            Self::Opus => "opus",
            Self::Flac => "flac",
            Self::Mulaw => "mulaw",
            Self::Aac => "aac",
        }
    }

    /// The media type of the stream.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Pcm16 => "audio/L16",
            Self::Wav => "audio/wav",
            Self::Mp3 => "audio/mpeg",
            Self::Opus => "audio/ogg; codecs=opus",
            Self::Flac => "audio/flac",
            Self::Mulaw => "audio/basic",
            Self::Aac => "audio/aac",
        }
    }

    /// The sample rate used when the caller asks for none: Opus runs at 48 kHz and µ-law at
    /// 8 kHz; the others keep the voice's rate.
    pub fn default_rate(self, input_rate: u32) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::Mulaw => 8_000,
            _ => input_rate,
        }
    }

    /// Whether the format can carry `rate`.
    pub fn supports_rate(self, rate: u32) -> bool {
        match self {
            Self::Opus => matches!(rate, 8_000 | 12_000 | 16_000 | 24_000 | 48_000),
            Self::Mulaw => rate == 8_000,
            Self::Mp3 => matches!(
                rate,
                8_000 | 11_025 | 12_000 | 16_000 | 22_050 | 24_000 | 32_000 | 44_100 | 48_000
            ),
            Self::Aac => adts_rate_index(rate).is_some(),
            Self::Pcm16 | Self::Wav | Self::Flac => (8_000..=192_000).contains(&rate),
        }
    }

    fn codec_name(self) -> &'static str {
        match self {
            Self::Pcm16 | Self::Wav => "pcm_s16le",
            Self::Mp3 => "libmp3lame",
            Self::Opus => "libopus",
            Self::Flac => "flac",
            Self::Mulaw => "pcm_mulaw",
            // FFmpeg's own encoder (LGPL), which every build has; not libfdk_aac.
            Self::Aac => "aac",
        }
    }

    fn sample_format(self) -> Sample {
        match self {
            Self::Mp3 => Sample::I16(Type::Planar),
            Self::Aac => Sample::F32(Type::Planar),
            _ => Sample::I16(Type::Packed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("FFmpeg has no {0} encoder on this system")]
    MissingEncoder(&'static str),
    #[error("{format} cannot carry {rate} Hz")]
    UnsupportedRate { format: &'static str, rate: u32 },
    #[error("FFmpeg failed: {0}")]
    Ffmpeg(#[from] ffmpeg_next::Error),
}

/// Encodes one stream.
pub struct Encoder {
    format: AudioFormat,
    output_rate: u32,
    input_rate: u32,
    resampler: resampling::Context,
    encoder: codec::encoder::Audio,
    frame_size: usize,
    small_last_frame: bool,
    pending: Vec<i16>,
    pts: i64,
    header_written: bool,
    ogg: Option<ogg::OpusWriter>,
    input_samples: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .field("output_rate", &self.output_rate)
            .finish_non_exhaustive()
    }
}

fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = ffmpeg_next::init();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    });
}

impl Encoder {
    /// An encoder from mono f32 samples at `input_rate` to `format` at `output_rate` (the
    /// format's default when `None`).
    pub fn new(
        format: AudioFormat,
        input_rate: u32,
        output_rate: Option<u32>,
    ) -> Result<Self, CodecError> {
        init();
        let output_rate = output_rate.unwrap_or_else(|| format.default_rate(input_rate));
        if !format.supports_rate(output_rate) {
            return Err(CodecError::UnsupportedRate {
                format: format.name(),
                rate: output_rate,
            });
        }
        let codec = ffmpeg_next::encoder::find_by_name(format.codec_name())
            .ok_or(CodecError::MissingEncoder(format.codec_name()))?;
        // PCM codecs take frames of any size; others take a short last frame if they say so.
        let small_last_frame = codec.capabilities().intersects(
            codec::capabilities::Capabilities::SMALL_LAST_FRAME
                | codec::capabilities::Capabilities::VARIABLE_FRAME_SIZE,
        );
        let mut encoder = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()?;
        encoder.set_rate(i32::try_from(output_rate).expect("bounded rate"));
        encoder.set_format(format.sample_format());
        encoder.set_channel_layout(ChannelLayout::MONO);
        encoder.set_time_base((1, i32::try_from(output_rate).expect("bounded rate")));
        match format {
            AudioFormat::Mp3 => encoder.set_bit_rate(64_000),
            AudioFormat::Opus => encoder.set_bit_rate(32_000),
            AudioFormat::Aac => encoder.set_bit_rate(64_000),
            _ => {}
        }
        let encoder = encoder.open_as(codec)?;
        let frame_size = usize::try_from(encoder.frame_size()).unwrap_or(0);
        let frame_size = if frame_size == 0 { 1024 } else { frame_size };
        let resampler = resampling::Context::get(
            Sample::F32(Type::Packed),
            ChannelLayout::MONO,
            input_rate,
            Sample::I16(Type::Packed),
            ChannelLayout::MONO,
            output_rate,
        )?;
        let ogg = (format == AudioFormat::Opus).then(|| ogg::OpusWriter::new(output_rate));
        Ok(Self {
            format,
            output_rate,
            input_rate,
            resampler,
            encoder,
            frame_size,
            small_last_frame,
            pending: Vec::new(),
            pts: 0,
            header_written: false,
            ogg,
            input_samples: 0,
        })
    }

    pub fn format(&self) -> AudioFormat {
        self.format
    }

    pub fn output_rate(&self) -> u32 {
        self.output_rate
    }

    /// Seconds of the audio pushed so far that the bytes returned so far do not hold yet: the
    /// samples waiting for a whole codec frame, and those inside the resampler. (A lossy codec's
    /// own look-ahead is not counted.)
    pub fn held_back_seconds(&self) -> f64 {
        let in_resampler = self
            .resampler
            .delay()
            .map_or(0, |delay| delay.output.max(0));
        (self.pending.len() as f64 + in_resampler as f64) / f64::from(self.output_rate)
    }

    /// Encodes `samples` and returns the bytes ready so far (the stream's header first).
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, CodecError> {
        let mut out = self.header();
        if samples.is_empty() {
            return Ok(out);
        }
        self.input_samples += samples.len() as u64;
        let mut input = frame::Audio::new(
            Sample::F32(Type::Packed),
            samples.len(),
            ChannelLayout::MONO,
        );
        input.set_rate(self.input_rate);
        input.plane_mut::<f32>(0).copy_from_slice(samples);
        let capacity = samples.len() * self.output_rate as usize / self.input_rate as usize + 256;
        let mut resampled =
            frame::Audio::new(Sample::I16(Type::Packed), capacity, ChannelLayout::MONO);
        self.resampler.run(&input, &mut resampled)?;
        self.pending
            .extend_from_slice(&resampled.plane::<i16>(0)[..resampled.samples()]);
        self.encode_pending(false, &mut out)?;
        Ok(out)
    }

    /// Flushes everything still inside the resampler and the codec and returns the last bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, CodecError> {
        let mut out = self.header();
        loop {
            let mut rest = frame::Audio::new(Sample::I16(Type::Packed), 4096, ChannelLayout::MONO);
            self.resampler.flush(&mut rest)?;
            if rest.samples() == 0 {
                break;
            }
            self.pending
                .extend_from_slice(&rest.plane::<i16>(0)[..rest.samples()]);
        }
        self.encode_pending(true, &mut out)?;
        self.encoder.send_eof()?;
        self.drain(&mut out)?;
        if let Some(ogg) = &mut self.ogg {
            let total =
                self.input_samples * u64::from(self.output_rate) / u64::from(self.input_rate);
            out.extend(ogg.finish(total));
        }
        Ok(out)
    }

    fn header(&mut self) -> Vec<u8> {
        if self.header_written {
            return Vec::new();
        }
        self.header_written = true;
        match self.format {
            AudioFormat::Wav => wav_header(self.output_rate),
            AudioFormat::Flac => flac_header(self.output_rate, self.frame_size),
            AudioFormat::Opus => self
                .ogg
                .as_mut()
                .map(ogg::OpusWriter::header)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn encode_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut start = 0;
        while self.pending.len() - start >= self.frame_size || (last && start < self.pending.len())
        {
            let available = (self.pending.len() - start).min(self.frame_size);
            let size = if available < self.frame_size && !self.small_last_frame {
                self.frame_size
            } else {
                available
            };
            let mut frame =
                frame::Audio::new(self.format.sample_format(), size, ChannelLayout::MONO);
            frame.set_rate(self.output_rate);
            frame.set_pts(Some(self.pts));
            let pending = &self.pending[start..start + available];
            if self.format.sample_format() == Sample::F32(Type::Planar) {
                let plane = frame.plane_mut::<f32>(0);
                for (to, &from) in plane.iter_mut().zip(pending) {
                    *to = f32::from(from) / 32_768.0;
                }
                plane[available..].fill(0.0);
            } else {
                let plane = frame.plane_mut::<i16>(0);
                plane[..available].copy_from_slice(pending);
                plane[available..].fill(0);
            }
            self.pts += i64::try_from(size).expect("frame sizes are small");
            self.encoder.send_frame(&frame)?;
            self.drain(out)?;
            start += available;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut packet = Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    let data = packet.data().unwrap_or_default();
                    match &mut self.ogg {
                        Some(ogg) => out.extend(ogg.packet(data, packet.duration())),
                        None if self.format == AudioFormat::Aac => {
                            out.extend(adts_header(self.output_rate, data.len()));
                            out.extend_from_slice(data);
                        }
                        None => out.extend_from_slice(data),
                    }
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
}

/// A WAV header for mono PCM16 of unknown length.
fn wav_header(rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    h.extend_from_slice(&2u16.to_le_bytes()); // block align
    h.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    h.extend_from_slice(b"data");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h
}

/// FLAC's stream marker and a STREAMINFO block for mono 16-bit audio of unknown length.
fn flac_header(rate: u32, block_size: usize) -> Vec<u8> {
    let block = u16::try_from(block_size).unwrap_or(u16::MAX);
    let mut h = Vec::with_capacity(42);
    h.extend_from_slice(b"fLaC");
    // Last metadata block, type 0 (STREAMINFO), 34 bytes.
    h.extend_from_slice(&[0x80, 0, 0, 34]);
    h.extend_from_slice(&16u16.to_be_bytes()); // minimum block size (the last block may be short)
    h.extend_from_slice(&block.to_be_bytes()); // maximum block size
    h.extend_from_slice(&[0, 0, 0]); // minimum frame size: unknown
    h.extend_from_slice(&[0, 0, 0]); // maximum frame size: unknown
    // 20 bits sample rate, 3 bits channels - 1, 5 bits bits per sample - 1, 36 bits total samples.
    // Channels - 1 is 0 for mono, so only the rate and the bit depth are set.
    let packed: u64 = (u64::from(rate) << 44) | (15u64 << 36);
    h.extend_from_slice(&packed.to_be_bytes());
    h.extend_from_slice(&[0; 16]); // MD5 of the audio: unknown
    h
}

/// The ADTS sampling-frequency index of `rate` (ISO/IEC 14496-3, table 1.18), if it has one.
fn adts_rate_index(rate: u32) -> Option<u8> {
    const RATES: [u32; 13] = [
        96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025,
        8_000, 7_350,
    ];
    RATES
        .iter()
        .position(|&r| r == rate)
        .map(|i| u8::try_from(i).expect("13 rates"))
}

/// The 7-byte ADTS header (no CRC) of one raw AAC-LC frame of `payload` bytes, mono, at `rate`
/// (ISO/IEC 14496-3, 1.A.2.2). The buffer fullness is 0x7FF: variable bit rate.
fn adts_header(rate: u32, payload: usize) -> [u8; 7] {
    let index = adts_rate_index(rate).expect("the encoder only opens at ADTS rates");
    // The 13-bit frame length counts the header; an AAC frame is at most 6,144 bits per channel.
    let length = u16::try_from(payload + 7).expect("an AAC frame is small") & 0x1FFF;
    let profile = 1; // AAC LC: audio object type 2, written minus one
    let channels = 1u8;
    [
        0xFF,
        0xF1, // sync, MPEG-4, layer 0, no CRC
        (profile << 6) | (index << 2) | (channels >> 2),
        ((channels & 3) << 6) | u8::try_from(length >> 11).expect("2 bits"),
        u8::try_from((length >> 3) & 0xFF).expect("8 bits"),
        (u8::try_from(length & 7).expect("3 bits") << 5) | 0x1F,
        0xFC, // the rest of the buffer fullness; one raw data block
    ]
}
