//! Frame header codec and masking (RFC 6455 §5.2–5.3).
//!
//! Owns: opcodes, the 2–14 byte header format (decoded incrementally, encoded
//! into a caller's buffer) and the XOR masking transform.
//! Must never: allocate, buffer payload bytes, or judge message-level rules
//! (fragment order, UTF-8, size limits) — that is `message`'s job.

/// Longest possible frame header: 2 bytes + 8-byte length + 4-byte mask key.
pub(crate) const MAX_HEADER_LEN: usize = 14;
/// Longest payload a control frame may carry (§5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// First header byte: the FIN flag.
const FIN_BIT: u8 = 0x80;
/// First header byte: RSV1..RSV3 sit just below FIN.
const RSV_SHIFT: u32 = 4;
/// The three RSV bits, as [`rsv_and_opcode`] returns them.
pub(crate) const RSV_BITS: u8 = 0b111;
/// First header byte: the opcode nibble.
const OPCODE_BITS: u8 = 0x0F;
/// Second header byte: the MASK flag.
const MASK_BIT: u8 = 0x80;
/// Second header byte: the 7-bit length field.
const LEN7_BITS: u8 = 0x7F;
/// 7-bit length value announcing a 16-bit extended length.
const LEN7_U16: u8 = 126;
/// 7-bit length value announcing a 64-bit extended length.
const LEN7_U64: u8 = 127;
/// Largest length that fits the 7-bit field directly.
const MAX_LEN7: u64 = 125;
/// Largest length that fits the 16-bit extended field.
const MAX_LEN16: u64 = u16::MAX as u64;
/// The 64-bit length must leave its most significant bit clear (§5.2).
const LEN64_TOP_BIT: u64 = 1 << 63;
const MASK_KEY_LEN: usize = 4;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Frame opcodes defined by RFC 6455 §5.2 (the reserved ones are not representable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// `None` for the reserved opcodes 0x3–0x7 and 0xB–0xF.
    pub(crate) fn from_u8(bits: u8) -> Option<OpCode> {
        match bits {
            OP_CONTINUATION => Some(OpCode::Continuation),
            OP_TEXT => Some(OpCode::Text),
            OP_BINARY => Some(OpCode::Binary),
            OP_CLOSE => Some(OpCode::Close),
            OP_PING => Some(OpCode::Ping),
            OP_PONG => Some(OpCode::Pong),
            _ => None,
        }
    }
    pub(crate) fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => OP_CONTINUATION,
            OpCode::Text => OP_TEXT,
            OpCode::Binary => OP_BINARY,
            OpCode::Close => OP_CLOSE,
            OpCode::Ping => OP_PING,
            OpCode::Pong => OP_PONG,
        }
    }
    /// Close, Ping and Pong.
    pub(crate) fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded (or to-be-encoded) frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits: RSV1 = 0b100, RSV2 = 0b010, RSV3 = 0b001.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Header-level violations; each maps to close code 1002.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("64-bit payload length with the most significant bit set")]
    LengthTopBit,
    #[error("payload length not in its minimal encoding")]
    NonMinimalLength,
}

/// Incremental header parser: keeps at most [`MAX_HEADER_LEN`] bytes of a
/// header split across reads, so a connection between frames holds nothing else.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderDecoder {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderDecoder {
    /// Consumes bytes of `input` until one header is complete.
    /// Returns how many bytes were consumed and the header once complete.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<FrameHeader>), HeaderError> {
        if self.len == 0 {
            // Common case: the whole header is in this read, so parse it in place.
            if let Some((used, header)) = parse_header(input)? {
                return Ok((used, Some(header)));
            }
        }
        let mut consumed = 0;
        loop {
            let have = usize::from(self.len);
            let wanted = match self.buf.first_chunk::<2>() {
                Some(&[_, b1]) if have >= 2 => header_len(b1),
                _ => 2,
            };
            let rest = &input[consumed..];
            // Take only what this header still needs: the payload is not ours.
            let take = wanted.saturating_sub(have).min(rest.len());
            if take == 0 {
                return Ok((consumed, None));
            }
            // `wanted <= MAX_HEADER_LEN` bounds both ranges.
            self.buf[have..have + take].copy_from_slice(&rest[..take]);
            consumed += take;
            self.len = (have + take) as u8;
            match parse_header(&self.buf[..have + take]) {
                Ok(None) => {}
                Ok(Some((_, header))) => {
                    self.len = 0;
                    return Ok((consumed, Some(header)));
                }
                Err(err) => {
                    self.len = 0;
                    return Err(err);
                }
            }
        }
    }
    /// True when no partial header is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of a header split across reads received so far.
    pub(crate) fn pending(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// The RSV bits and the opcode of a header's first byte, so a receiver can
/// judge them before the rest of the header has arrived. The opcode is `None`
/// when reserved.
pub(crate) fn rsv_and_opcode(first_byte: u8) -> (u8, Option<OpCode>) {
    (
        (first_byte >> RSV_SHIFT) & RSV_BITS,
        OpCode::from_u8(first_byte & OPCODE_BITS),
    )
}

/// Total header length implied by its second byte.
fn header_len(b1: u8) -> usize {
    let extended = match b1 & LEN7_BITS {
        LEN7_U16 => 2,
        LEN7_U64 => 8,
        _ => 0,
    };
    let key = if b1 & MASK_BIT != 0 { MASK_KEY_LEN } else { 0 };
    2 + extended + key
}

/// Parses a header from the start of `bytes`: `Ok(None)` while incomplete.
/// The opcode is judged from the first byte alone, so a bad one fails before
/// the rest of the header arrives.
fn parse_header(bytes: &[u8]) -> Result<Option<(usize, FrameHeader)>, HeaderError> {
    let Some(&b0) = bytes.first() else {
        return Ok(None);
    };
    let opcode_bits = b0 & OPCODE_BITS;
    let opcode = OpCode::from_u8(opcode_bits).ok_or(HeaderError::ReservedOpcode(opcode_bits))?;
    let Some((&[_, b1], rest)) = bytes.split_first_chunk::<2>() else {
        return Ok(None);
    };
    let (payload_len, rest) = match b1 & LEN7_BITS {
        LEN7_U16 => {
            let Some((ext, rest)) = rest.split_first_chunk::<2>() else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes(*ext));
            if len <= MAX_LEN7 {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, rest)
        }
        LEN7_U64 => {
            let Some((ext, rest)) = rest.split_first_chunk::<8>() else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(*ext);
            if len & LEN64_TOP_BIT != 0 {
                return Err(HeaderError::LengthTopBit);
            }
            if len <= MAX_LEN16 {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, rest)
        }
        short => (u64::from(short), rest),
    };
    let mask = if b1 & MASK_BIT != 0 {
        let Some((key, _)) = rest.split_first_chunk::<MASK_KEY_LEN>() else {
            return Ok(None);
        };
        Some(*key)
    } else {
        None
    };
    let header = FrameHeader {
        fin: b0 & FIN_BIT != 0,
        rsv: (b0 >> RSV_SHIFT) & RSV_BITS,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header_len(b1), header)))
}

/// Writes the header for a frame into `out`, returning its length.
/// The server never masks, but the codec supports it for tests and clients.
/// `payload_len` must stay below 2^63, the most the wire format can carry.
pub(crate) fn encode_header(header: &FrameHeader, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    let fin = if header.fin { FIN_BIT } else { 0 };
    out[0] = fin | ((header.rsv & RSV_BITS) << RSV_SHIFT) | header.opcode.as_u8();
    let mask_bit = if header.mask.is_some() { MASK_BIT } else { 0 };
    let len = header.payload_len;
    let mut used = 2;
    if len <= MAX_LEN7 {
        out[1] = mask_bit | len as u8;
    } else if len <= MAX_LEN16 {
        out[1] = mask_bit | LEN7_U16;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        used += 2;
    } else {
        out[1] = mask_bit | LEN7_U64;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        used += 8;
    }
    if let Some(key) = header.mask {
        out[used..used + MASK_KEY_LEN].copy_from_slice(&key);
        used += MASK_KEY_LEN;
    }
    used
}

/// Appends an unmasked frame (header and payload) to `out`, as a server sends it.
/// Only the caller's buffer grows; the codec itself holds nothing.
pub(crate) fn write_frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let head_len = encode_header(&header, &mut head);
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(payload);
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the payload.
/// Works a machine word at a time.
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % MASK_KEY_LEN);
    // `from_ne_bytes` copies out of the slice, so the word loop needs no
    // alignment prefix: unaligned loads are as fast here and keep it safe.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let (words, tail) = data.as_chunks_mut::<8>();
    for chunk in words {
        *chunk = (u64::from_ne_bytes(*chunk) ^ word).to_ne_bytes();
    }
    // Every word spans whole key periods, so the tail starts at key index 0.
    for (byte, k) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn header(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload_len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    /// Builds a whole frame the way a client would, masking the payload.
    fn build_frame(h: &FrameHeader, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(h, &mut head);
        let mut out = head[..n].to_vec();
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = h.mask {
            apply_mask(&mut out[start..], key, 0);
        }
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<(usize, Option<FrameHeader>), HeaderError> {
        HeaderDecoder::default().feed(bytes)
    }

    /// Feeds `bytes` in the given pieces and returns the header and the bytes consumed.
    fn decode_split(bytes: &[u8], cuts: &[usize]) -> (usize, FrameHeader) {
        let mut dec = HeaderDecoder::default();
        let mut pos = 0;
        let mut bounds = cuts.to_vec();
        bounds.push(bytes.len());
        for end in bounds {
            let end = end.clamp(pos, bytes.len());
            let (used, h) = dec.feed(&bytes[pos..end]).expect("valid header");
            pos += used;
            if let Some(h) = h {
                assert!(dec.is_empty());
                return (pos, h);
            }
            assert_eq!(pos, end, "an incomplete header consumes all it is given");
        }
        panic!("header never completed");
    }

    struct RfcExample {
        name: &'static str,
        wire: Vec<u8>,
        header: FrameHeader,
        payload: Vec<u8>,
    }

    fn rfc_examples() -> Vec<RfcExample> {
        let hello = b"Hello".to_vec();
        let mut big256 = vec![0x82, 0x7e, 0x01, 0x00];
        big256.extend(std::iter::repeat_n(0xAB, 256));
        let mut big64k = vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
        big64k.extend(std::iter::repeat_n(0xCD, 65536));
        vec![
            RfcExample {
                name: "unmasked text",
                wire: vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
                header: header(true, OpCode::Text, None, 5),
                payload: hello.clone(),
            },
            RfcExample {
                name: "masked text",
                wire: vec![
                    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
                ],
                header: header(true, OpCode::Text, Some(RFC_MASK), 5),
                payload: hello.clone(),
            },
            RfcExample {
                name: "fragment 1",
                wire: vec![0x01, 0x03, 0x48, 0x65, 0x6c],
                header: header(false, OpCode::Text, None, 3),
                payload: b"Hel".to_vec(),
            },
            RfcExample {
                name: "fragment 2",
                wire: vec![0x80, 0x02, 0x6c, 0x6f],
                header: header(true, OpCode::Continuation, None, 2),
                payload: b"lo".to_vec(),
            },
            RfcExample {
                name: "unmasked ping",
                wire: vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
                header: header(true, OpCode::Ping, None, 5),
                payload: hello.clone(),
            },
            RfcExample {
                name: "masked pong",
                wire: vec![
                    0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
                ],
                header: header(true, OpCode::Pong, Some(RFC_MASK), 5),
                payload: hello,
            },
            RfcExample {
                name: "256-byte binary",
                wire: big256,
                header: header(true, OpCode::Binary, None, 256),
                payload: vec![0xAB; 256],
            },
            RfcExample {
                name: "64 KiB binary",
                wire: big64k,
                header: header(true, OpCode::Binary, None, 65536),
                payload: vec![0xCD; 65536],
            },
        ]
    }

    #[test]
    fn rfc_examples_encode_byte_for_byte() {
        for ex in rfc_examples() {
            assert_eq!(build_frame(&ex.header, &ex.payload), ex.wire, "{}", ex.name);
            if ex.header.mask.is_none() {
                let mut out = Vec::new();
                write_frame(&mut out, ex.header.fin, 0, ex.header.opcode, &ex.payload);
                assert_eq!(out, ex.wire, "write_frame {}", ex.name);
            }
        }
    }

    #[test]
    fn rfc_examples_decode_and_unmask() {
        for ex in rfc_examples() {
            let (used, h) = decode_all(&ex.wire).unwrap();
            let h = h.unwrap();
            assert_eq!(h, ex.header, "{}", ex.name);
            let mut payload = ex.wire[used..].to_vec();
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            assert_eq!(payload, ex.payload, "{}", ex.name);
        }
    }

    #[test]
    fn rfc_example_headers_split_at_every_byte() {
        for ex in rfc_examples() {
            let head_len = decode_all(&ex.wire).unwrap().0;
            // Splits past the header must not make the decoder eat payload.
            for cut in 0..=head_len + 1 {
                let (used, h) = decode_split(&ex.wire, &[cut]);
                assert_eq!((used, h), (head_len, ex.header), "{} cut {cut}", ex.name);
            }
            let singles: Vec<usize> = (1..head_len).collect();
            let (used, h) = decode_split(&ex.wire, &singles);
            assert_eq!((used, h), (head_len, ex.header), "{} byte by byte", ex.name);
        }
    }

    #[test]
    fn feed_resets_for_the_next_header() {
        let mut wire = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        wire.extend_from_slice(&[0x80, 0x02, 0x6c, 0x6f]);
        let mut dec = HeaderDecoder::default();
        let (used, first) = dec.feed(&wire[..1]).unwrap();
        assert_eq!((used, first), (1, None));
        assert!(!dec.is_empty());
        let (used, first) = dec.feed(&wire[1..]).unwrap();
        assert_eq!(used, 1);
        assert_eq!(first, Some(header(false, OpCode::Text, None, 3)));
        let (used, second) = dec.feed(&wire[5..]).unwrap();
        assert_eq!(used, 2);
        assert_eq!(second, Some(header(true, OpCode::Continuation, None, 2)));
        assert_eq!(dec.feed(&[]).unwrap(), (0, None));
        assert!(dec.is_empty());
    }

    #[test]
    fn every_opcode_value() {
        let expected = [
            (0x0, Some(OpCode::Continuation)),
            (0x1, Some(OpCode::Text)),
            (0x2, Some(OpCode::Binary)),
            (0x8, Some(OpCode::Close)),
            (0x9, Some(OpCode::Ping)),
            (0xA, Some(OpCode::Pong)),
        ];
        for bits in 0u8..=0xF {
            let want = expected
                .iter()
                .find(|(b, _)| *b == bits)
                .and_then(|(_, op)| *op);
            assert_eq!(OpCode::from_u8(bits), want, "opcode {bits:#x}");
            if let Some(op) = want {
                assert_eq!(op.as_u8(), bits);
                assert_eq!(op.is_control(), bits >= 0x8);
            }
            let wire = [0x80 | bits, 0x00];
            match want {
                Some(op) => assert_eq!(
                    decode_all(&wire).unwrap(),
                    (2, Some(header(true, op, None, 0)))
                ),
                None => {
                    assert_eq!(decode_all(&wire), Err(HeaderError::ReservedOpcode(bits)));
                    // Judged from the first byte alone, before the rest arrives.
                    let mut dec = HeaderDecoder::default();
                    assert_eq!(dec.feed(&wire[..1]), Err(HeaderError::ReservedOpcode(bits)));
                }
            }
        }
        assert_eq!(OpCode::from_u8(0x10), None);
    }

    #[test]
    fn rsv_and_fin_bits() {
        for rsv in 0u8..8 {
            for fin in [false, true] {
                let h = FrameHeader {
                    fin,
                    rsv,
                    opcode: OpCode::Binary,
                    mask: None,
                    payload_len: 1,
                };
                let wire = build_frame(&h, &[0]);
                assert_eq!(decode_all(&wire).unwrap(), (2, Some(h)));
            }
        }
        let h = decode_all(&[0xC1, 0x00]).unwrap().1.unwrap();
        assert_eq!(h.rsv, 0b100, "RSV1 maps to 0b100");
        let h = decode_all(&[0x91, 0x00]).unwrap().1.unwrap();
        assert_eq!(h.rsv, 0b001, "RSV3 maps to 0b001");
    }

    #[test]
    fn length_edge_cases() {
        let cases: [(u64, usize); 6] = [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            ((1 << 63) - 1, 10),
        ];
        for (len, head_len) in cases {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(true, OpCode::Binary, mask, len);
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&h, &mut out);
                let extra = if mask.is_some() { 4 } else { 0 };
                assert_eq!(n, head_len + extra, "len {len}");
                assert_eq!(decode_all(&out[..n]).unwrap(), (n, Some(h)), "len {len}");
                for cut in 0..=n {
                    assert_eq!(
                        decode_split(&out[..n], &[cut]),
                        (n, h),
                        "len {len} cut {cut}"
                    );
                }
                let singles: Vec<usize> = (1..n).collect();
                assert_eq!(
                    decode_split(&out[..n], &singles),
                    (n, h),
                    "len {len} bytewise"
                );
            }
        }
        let top = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_all(&top), Err(HeaderError::LengthTopBit));
        let all_ones = [0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode_all(&all_ones), Err(HeaderError::LengthTopBit));
    }

    #[test]
    fn non_minimal_lengths_are_rejected() {
        let cases: [&[u8]; 6] = [
            &[0x82, 0x7e, 0x00, 0x00],
            &[0x82, 0x7e, 0x00, 0x7d],
            &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0x7d],
            &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0x7e],
            &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            &[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        ];
        for wire in cases {
            assert_eq!(
                decode_all(wire),
                Err(HeaderError::NonMinimalLength),
                "{wire:x?}"
            );
            let mut dec = HeaderDecoder::default();
            let mut result = Ok((0, None));
            for b in wire {
                result = dec.feed(std::slice::from_ref(b));
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(HeaderError::NonMinimalLength), "{wire:x?}");
        }
        // The shortest encodings right at each boundary are fine.
        assert!(decode_all(&[0x82, 0x7e, 0x00, 0x7e]).is_ok());
        assert!(decode_all(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0, 0]).is_ok());
    }

    fn naive_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn apply_mask_matches_bytewise_reference() {
        let key = [0x12, 0x34, 0xab, 0xcd];
        for offset in 0..8 {
            for len in 0..64 {
                // Also start at odd positions inside a buffer to vary alignment.
                for start in 0..3 {
                    let mut fast = sample(len + start);
                    let mut slow = fast.clone();
                    apply_mask(&mut fast[start..], key, offset);
                    naive_mask(&mut slow[start..], key, offset);
                    assert_eq!(fast, slow, "offset {offset} len {len} start {start}");
                }
            }
        }
        for len in [1000, 4093, 65536, 1 << 20] {
            for offset in [0, 3, usize::MAX] {
                let mut fast = sample(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, key, offset);
                naive_mask(&mut slow, key, offset % 4);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn apply_mask_in_pieces_equals_whole() {
        let key = RFC_MASK;
        let original = sample(100);
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..=original.len() {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(pieces, whole, "cut {cut}");
        }
    }

    fn any_header() -> impl Strategy<Value = FrameHeader> {
        let opcode = prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ];
        let len = prop_oneof![
            0u64..=125,
            126u64..=65535,
            65536u64..=(1 << 63) - 1,
            Just((1u64 << 63) - 1),
        ];
        (
            any::<bool>(),
            0u8..8,
            opcode,
            proptest::option::of(any::<[u8; 4]>()),
            len,
        )
            .prop_map(|(fin, rsv, opcode, mask, payload_len)| FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            })
    }

    proptest! {
        #[test]
        fn header_round_trips_in_any_split(
            h in any_header(),
            cuts in proptest::collection::vec(0usize..16, 0..6),
            trailing in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&h, &mut out);
            let mut wire = out[..n].to_vec();
            wire.extend_from_slice(&trailing);
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_split(&wire, &cuts), (n, h));
        }
    }
}
