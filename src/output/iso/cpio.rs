//! A newc cpio archive (the "new ASCII" format the kernel unpacks initramfs images from,
//! Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte header of hex
//! fields per entry, its name, its data, each padded to 4 bytes, ended by `TRAILER!!!`. Used
//! for `kiln.img`, the initrd the ISO appends to the image's own. Entries are written in the
//! order given (parents before children, as the kernel needs), owned by root, with one fixed
//! time so the same content gives the same bytes.

use std::io::{self, Read, Write};

use anyhow::{ensure, Context, Result};

pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter { out, written: 0, next_ino: 1, mtime }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.entry(path, 0o040000 | mode, 2, 0, &mut io::empty())
    }

    /// A regular file of `size` bytes read from `data`.
    pub fn file(&mut self, path: &str, mode: u32, size: u64, data: &mut dyn Read) -> Result<()> {
        self.entry(path, 0o100000 | mode, 1, size, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, 0o120777, 1, target.len() as u64, &mut target.as_bytes())
    }

    /// Writes the trailer; returns the writer and the archive's size.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.next_ino = 0;
        self.header("TRAILER!!!", 0, 1, 0)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, size: u64, data: &mut dyn Read) -> Result<()> {
        ensure!(!path.is_empty() && !path.starts_with('/') && !path.contains('\0'), "cpio entry {path:?}: a relative path");
        ensure!(size <= u32::MAX as u64, "{path} is {size} bytes: newc cpio holds files below 4 GiB");
        self.header(path, mode, nlink, size as u32)?;
        let copied = io::copy(&mut data.take(size), &mut self.out).with_context(|| format!("writing {path} into the cpio archive"))?;
        ensure!(copied == size, "{path} ended after {copied} of {size} bytes");
        self.written += size;
        self.pad()
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u32) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += 110 + name.len() as u64 + 1;
        self.pad()
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.out.write_all(&[0u8; 3][..n as usize])?;
        self.written += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// GNU cpio (an independent reader) lists and extracts what was written.
    #[test]
    fn gnu_cpio_extracts_the_archive() {
        let mut w = CpioWriter::new(Vec::new(), 1_764_633_600);
        w.dir("usr", 0o755).unwrap();
        w.dir("usr/bin", 0o755).unwrap();
        w.file("usr/bin/kiln", 0o755, 5, &mut &b"hello"[..]).unwrap();
        w.file("empty", 0o644, 0, &mut io::empty()).unwrap();
        w.symlink("bin", "usr/bin").unwrap();
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(size % 4, 0);

        let dir = std::env::temp_dir().join(format!("kiln-cpio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--no-absolute-filenames", "--quiet"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio (cpio package)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(dir.join("usr/bin/kiln")).unwrap(), b"hello");
        assert_eq!(std::fs::read_link(dir.join("bin")).unwrap().to_str(), Some("usr/bin"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("usr/bin/kiln")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::metadata(dir.join("empty")).unwrap().len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
