//! Reading blobs: digest verification, decompression, and a reader thread that overlaps
//! decompression with whatever consumes the stream.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Passes bytes through and, at the end of the stream, checks that their sha256 (and size,
/// when known) match; a mismatch is an `InvalidData` error naming `what`.
pub struct Verified<R> {
    inner: R,
    hasher: Sha256,
    expected: String,
    size: Option<u64>,
    read: u64,
    what: String,
    /// What a digest mismatch means and what to do, for the error.
    mismatch: &'static str,
    checked: bool,
}

impl<R: Read> Verified<R> {
    pub fn new(inner: R, expected: &str, size: Option<u64>, what: impl Into<String>) -> Self {
        Verified {
            inner,
            hasher: Sha256::new(),
            expected: expected.to_string(),
            size,
            read: 0,
            what: what.into(),
            mismatch: "the blob is corrupt: fetch or copy the image again",
            checked: false,
        }
    }

    /// A layer's uncompressed tar, checked against the diff_id the image config gives.
    pub fn diff_id(inner: R, diff_id: &str, what: impl Into<String>) -> Self {
        Verified {
            mismatch: "the layer decompresses to other content than the image config's diff_id: \
                       the image was built or altered wrongly; rebuild and push it again",
            ..Verified::new(inner, diff_id, None, what)
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if let Some(size) = self.size {
            if self.read > size {
                return Err(invalid(format!("{} is longer than the {size} bytes its descriptor gives", self.what)));
            }
        }
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            if let Some(size) = self.size {
                if self.read != size {
                    return Err(invalid(format!(
                        "{} is truncated: {} of {size} bytes (a corrupt or partial download; fetch it again)",
                        self.what, self.read
                    )));
                }
            }
            let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if actual != self.expected {
                return Err(invalid(format!(
                    "{} does not match its digest: expected {}, got {actual} ({})",
                    self.what, self.expected, self.mismatch
                )));
            }
        }
        Ok(n)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reports bytes read to a progress stage.
pub struct Counted<R> {
    pub inner: R,
    pub stage: crate::progress::Stage,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stage.inc(n as u64);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the media type, falling back to the stream's magic bytes (Docker's media types
    /// say `tar.gzip` for everything; some tools lie).
    pub fn detect(media_type: &str, head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if media_type.ends_with("+zstd") || media_type.ends_with("zstd:chunked") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Wraps a compressed stream in its decoder (zstd:chunked is plain zstd with skippable frames).
pub fn decompress(reader: impl Read + Send + 'static, media_type: &str) -> io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let head = reader.fill_buf()?.to_vec();
    let c = Compression::detect(media_type, &head);
    let r: Box<dyn Read + Send> = match c {
        Compression::Gzip => Box::new(GzipMembers::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::None => Box::new(reader),
    };
    Ok((c, r))
}

/// Decompresses gzip (every member, as Go's reader does) without checking the members'
/// CRC-32: the sha256 of the blob and of the tar already prove the bytes, and the CRC would
/// cost a tenth of the decompressing thread's time.
struct GzipMembers<R: BufRead> {
    decoder: Option<flate2::bufread::DeflateDecoder<R>>,
    /// Bytes out of the current member, checked against its trailer's size field.
    out: u64,
}

impl<R: BufRead> GzipMembers<R> {
    fn new(r: R) -> Self {
        GzipMembers { decoder: Some(flate2::bufread::DeflateDecoder::new(r)), out: 0 }
    }
}

/// Reads a gzip member header (RFC 1952) up to its deflate data.
fn skip_gzip_header(r: &mut impl BufRead) -> io::Result<()> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h)?;
    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return Err(invalid("not a gzip stream (bad header)".into()));
    }
    let flags = h[3];
    if flags & 4 != 0 {
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        io::copy(&mut r.take(u16::from_le_bytes(len) as u64), &mut io::sink())?;
    }
    for flag in [8u8, 16] {
        if flags & flag != 0 {
            let mut v = Vec::new();
            r.read_until(0, &mut v)?;
        }
    }
    if flags & 2 != 0 {
        r.read_exact(&mut [0u8; 2])?;
    }
    Ok(())
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.decoder.as_mut() else { return Ok(0) };
            if self.out == 0 && dec.total_in() == 0 {
                skip_gzip_header(dec.get_mut())?;
            }
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.out += n as u64;
                return Ok(n);
            }
            // End of a member: its trailer, then another member or the end.
            let mut inner = self.decoder.take().unwrap().into_inner();
            let mut trailer = [0u8; 8];
            inner.read_exact(&mut trailer).map_err(|_| invalid("gzip stream truncated (no trailer)".into()))?;
            let size = u32::from_le_bytes(trailer[4..].try_into().unwrap());
            if size != self.out as u32 {
                return Err(invalid("gzip member size does not match its trailer (corrupt data)".into()));
            }
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder = Some(flate2::bufread::DeflateDecoder::new(inner));
            self.out = 0;
        }
    }
}

/// Runs `reader` on a thread of its own, handing its bytes over in chunks through a bounded
/// queue, so that decompressing and hashing overlap with the consumer's work. Memory stays
/// bounded by `CHUNK * DEPTH`.
pub fn pipelined(mut reader: Box<dyn Read + Send>) -> impl Read + Send {
    const CHUNK: usize = 1 << 20;
    const DEPTH: usize = 4;
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    // Emptied chunks come back for reuse: no allocation or zeroing per chunk.
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    let spawned = std::thread::Builder::new().spawn(move || loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        // Fill whole chunks: decoders return small reads.
        let result = loop {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        let end = filled == 0;
        let failed = result.is_err();
        let msg = result.map(|()| buf);
        if tx.send(msg).is_err() || end || failed {
            return;
        }
    });
    // No thread (a memory or process limit): an error to read, not a panic.
    let rx = match spawned {
        Ok(_) => rx,
        Err(e) => {
            let (tx, rx) = mpsc::sync_channel(1);
            let _ = tx.send(Err(io::Error::new(e.kind(), format!("cannot start a thread to read it: {e}"))));
            rx
        }
    };
    ChunkReader { rx, recycle, current: Vec::new(), pos: 0, done: false }
}

struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    if chunk.is_empty() {
                        self.done = true;
                    }
                    let used = std::mem::replace(&mut self.current, chunk);
                    if used.capacity() > 0 {
                        let _ = self.recycle.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a stream to its end, counting its bytes.
pub fn count(mut r: impl Read) -> io::Result<u64> {
    io::copy(&mut r, &mut io::sink())
}

/// Reads a stream to its end (so that a verifying reader sees the whole blob), discarding it.
pub fn drain(mut r: impl Read) -> io::Result<()> {
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn verified_accepts_matching_and_rejects_corrupt_truncated_and_long() {
        let data = b"hello blob".to_vec();
        let d = digest(&data);
        let mut ok = Verified::new(&data[..], &d, Some(data.len() as u64), "blob x");
        assert!(drain(&mut ok).is_ok());

        let mut bad = data.clone();
        bad[0] ^= 1;
        let err = drain(Verified::new(&bad[..], &d, Some(10), "blob x")).unwrap_err().to_string();
        assert!(err.contains("blob x does not match its digest"), "{err}");

        let err = drain(Verified::new(&data[..5], &d, Some(10), "blob x")).unwrap_err().to_string();
        assert!(err.contains("truncated: 5 of 10"), "{err}");

        let err = drain(Verified::new(&data[..], &d, Some(4), "blob x")).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn gzip_members_all_read_and_corruption_caught() {
        use std::io::Write;
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut two = gz(b"member one, ");
        two.extend(gz(b"member two"));
        let (_, mut r) = decompress(io::Cursor::new(two.clone()), "").unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"member one, member two");

        let mut bad_size = two.clone();
        let n = bad_size.len();
        bad_size[n - 2] ^= 1; // the second member's ISIZE
        let (_, r) = decompress(io::Cursor::new(bad_size), "").unwrap();
        assert!(drain(r).is_err());

        let mut garbage = two;
        garbage.extend_from_slice(b"junk");
        let (_, r) = decompress(io::Cursor::new(garbage), "").unwrap();
        assert!(drain(r).is_err());
    }

    #[test]
    fn zstd_chunked_reads_as_plain_zstd() {
        // zstd:chunked is zstd frames plus skippable frames carrying its table of contents.
        let mut blob = zstd::encode_all(&b"first frame "[..], 3).unwrap();
        blob.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        blob.extend_from_slice(&5u32.to_le_bytes());
        blob.extend_from_slice(b"TOC!!");
        blob.extend(zstd::encode_all(&b"second frame"[..], 3).unwrap());
        let (c, mut r) = decompress(io::Cursor::new(blob), "application/vnd.oci.image.layer.v1.tar+zstd").unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!((c, out.as_slice()), (Compression::Zstd, &b"first frame second frame"[..]));
    }

    #[test]
    fn pipelined_passes_bytes_and_errors_through() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        pipelined(Box::new(io::Cursor::new(data.clone()))).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let d = digest(b"other");
        let err = drain(pipelined(Box::new(Verified::new(io::Cursor::new(data), &d, None, "layer 1"))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 1 does not match"), "{err}");
    }
}
