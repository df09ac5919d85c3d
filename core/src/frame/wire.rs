//! Frames on the wire: masking, building frames, extension offers.

/// XORs `buf` with `key`, `buf[0]` being payload byte `pos` of its frame.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], pos: u64) {
    let off = (pos % 4) as usize;
    // The key as it lines up with buf[0], eight bytes at a time.
    let k: [u8; 8] = std::array::from_fn(|i| key[(off + i) % 4]);
    let word = u64::from_ne_bytes(k);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(k) {
        *b ^= k;
    }
}

/// A close frame with `code` and `reason` (cut to 123 bytes at a character boundary), masked
/// with `mask` when given.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(0x8, true, &payload, mask)
}

/// One unfragmented frame with `opcode` and `payload` (FIN as given), masked with `mask` when
/// given; for tests, benches and front ends that write frames of their own.
pub fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = f.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(key) = mask {
        f.extend_from_slice(&key);
    }
    f.extend_from_slice(payload);
    if let Some(key) = mask {
        unmask(&mut f[start..], key, 0);
    }
    f
}

/// A `Sec-WebSocket-Extensions` value without the offers of extension `name`
/// (case-insensitive); `None` when no offer is left (remove the header). Offers are separated
/// by commas, parameters by semicolons (RFC 6455 §9.1); quoted commas are not expected there.
pub fn strip_extension(value: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|offer| {
            let token = offer.split(';').next().unwrap_or("").trim();
            !token.is_empty() && !token.eq_ignore_ascii_case(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}
