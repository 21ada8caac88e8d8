//! A slow, independent DEFLATE reader (RFC 1951) for tests only: it decodes
//! bit by bit and reports the farthest back-reference, which zlib does not
//! expose, so tests can check that output honours `server_max_window_bits`.

/// Extra-bit tables of RFC 1951 §3.2.5.
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DISTANCE_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// Order of the code-length code lengths in a dynamic block header.
const CODE_LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];
const MAX_CODE_BITS: usize = 15;
const END_OF_BLOCK: u16 = 256;

/// What a whole stream decoded to.
#[derive(Debug)]
pub(super) struct Decoded {
    pub data: Vec<u8>,
    /// The largest distance of any back-reference (0 if none).
    pub max_distance: usize,
}

/// Decodes a raw DEFLATE stream that ends at a block boundary (as a
/// permessage-deflate payload does once `00 00 ff ff` is appended).
pub(super) fn decode(input: &[u8]) -> Result<Decoded, &'static str> {
    let mut bits = Bits {
        input,
        at: 0,
        buffer: 0,
        count: 0,
    };
    let mut out = Decoded {
        data: Vec::new(),
        max_distance: 0,
    };
    loop {
        let last = bits.take(1)? == 1;
        match bits.take(2)? {
            0 => stored(&mut bits, &mut out)?,
            1 => {
                let (lengths, distances) = fixed_codes();
                codes(&mut bits, &mut out, &lengths, &distances)?;
            }
            2 => {
                let (lengths, distances) = dynamic_codes(&mut bits)?;
                codes(&mut bits, &mut out, &lengths, &distances)?;
            }
            _ => return Err("reserved block type"),
        }
        if last || bits.at == input.len() {
            return Ok(out);
        }
    }
}

struct Bits<'a> {
    input: &'a [u8],
    at: usize,
    buffer: u32,
    count: u32,
}

impl Bits<'_> {
    fn take(&mut self, n: u32) -> Result<u32, &'static str> {
        while self.count < n {
            let byte = *self.input.get(self.at).ok_or("input ends mid-block")?;
            self.at += 1;
            self.buffer |= u32::from(byte) << self.count;
            self.count += 8;
        }
        let value = self.buffer & ((1 << n) - 1);
        self.buffer >>= n;
        self.count -= n;
        Ok(value)
    }

    fn align(&mut self) {
        self.buffer = 0;
        self.count = 0;
    }
}

/// A canonical Huffman code: how many codes of each length, and the symbols
/// in code order.
struct Huffman {
    counts: [u16; MAX_CODE_BITS + 1],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; MAX_CODE_BITS + 1];
        for &len in lengths {
            counts[usize::from(len)] += 1;
        }
        counts[0] = 0;
        let mut symbols = Vec::new();
        for len in 1..=MAX_CODE_BITS {
            for (symbol, &l) in lengths.iter().enumerate() {
                if usize::from(l) == len {
                    symbols.push(symbol as u16);
                }
            }
        }
        Huffman { counts, symbols }
    }

    fn read(&self, bits: &mut Bits<'_>) -> Result<u16, &'static str> {
        // Codes are sent most significant bit first.
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..=MAX_CODE_BITS {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - first < count {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("invalid Huffman code")
    }
}

fn stored(bits: &mut Bits<'_>, out: &mut Decoded) -> Result<(), &'static str> {
    bits.align();
    let header = bits
        .input
        .get(bits.at..bits.at + 4)
        .ok_or("short stored header")?;
    let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let nlen = u16::from_le_bytes([header[2], header[3]]);
    if nlen != !(len as u16) {
        return Err("stored length check failed");
    }
    bits.at += 4;
    let data = bits
        .input
        .get(bits.at..bits.at + len)
        .ok_or("short stored block")?;
    out.data.extend_from_slice(data);
    bits.at += len;
    Ok(())
}

fn fixed_codes() -> (Huffman, Huffman) {
    let mut lengths = [0u8; 288];
    for (symbol, len) in lengths.iter_mut().enumerate() {
        *len = match symbol {
            0..=143 => 8,
            144..=255 => 9,
            256..=279 => 7,
            _ => 8,
        };
    }
    (Huffman::new(&lengths), Huffman::new(&[5; 30]))
}

fn dynamic_codes(bits: &mut Bits<'_>) -> Result<(Huffman, Huffman), &'static str> {
    let literal_count = bits.take(5)? as usize + 257;
    let distance_count = bits.take(5)? as usize + 1;
    let code_length_count = bits.take(4)? as usize + 4;
    let mut code_lengths = [0u8; 19];
    for &symbol in &CODE_LENGTH_ORDER[..code_length_count] {
        code_lengths[symbol] = bits.take(3)? as u8;
    }
    let code_length_code = Huffman::new(&code_lengths);
    let mut lengths = Vec::with_capacity(literal_count + distance_count);
    while lengths.len() < literal_count + distance_count {
        let (value, repeat) = match code_length_code.read(bits)? {
            len @ 0..=15 => (len as u8, 1),
            16 => (
                *lengths.last().ok_or("repeat with no previous length")?,
                3 + bits.take(2)?,
            ),
            17 => (0, 3 + bits.take(3)?),
            _ => (0, 11 + bits.take(7)?),
        };
        lengths.extend(std::iter::repeat_n(value, repeat as usize));
    }
    if lengths.len() != literal_count + distance_count {
        return Err("code lengths overrun");
    }
    let (literals, distances) = lengths.split_at(literal_count);
    Ok((Huffman::new(literals), Huffman::new(distances)))
}

fn codes(
    bits: &mut Bits<'_>,
    out: &mut Decoded,
    lengths: &Huffman,
    distances: &Huffman,
) -> Result<(), &'static str> {
    loop {
        let symbol = lengths.read(bits)?;
        match symbol {
            0..=255 => out.data.push(symbol as u8),
            END_OF_BLOCK => return Ok(()),
            _ => {
                let i = usize::from(symbol - 257);
                let length = usize::from(*LENGTH_BASE.get(i).ok_or("bad length symbol")?)
                    + bits.take(LENGTH_EXTRA[i])? as usize;
                let d = usize::from(distances.read(bits)?);
                let distance = usize::from(*DISTANCE_BASE.get(d).ok_or("bad distance symbol")?)
                    + bits.take(DISTANCE_EXTRA[d])? as usize;
                if distance > out.data.len() {
                    return Err("distance before the start");
                }
                out.max_distance = out.max_distance.max(distance);
                let from = out.data.len() - distance;
                for k in 0..length {
                    let byte = out.data[from + k];
                    out.data.push(byte);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rfc_examples() {
        let hello = decode(&[
            0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff,
        ]);
        assert_eq!(hello.unwrap().data, b"Hello");
        // RFC 7692 §7.2.3.2's second message refers back 5 bytes.
        let shared = decode(&[
            0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff, 0xf2, 0x00, 0x11,
            0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        ])
        .unwrap();
        assert_eq!(shared.data, b"HelloHello");
        assert_eq!(shared.max_distance, 5);
    }
}
