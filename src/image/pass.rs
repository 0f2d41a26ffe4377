//! The one pass over the ISO. Each chunk is read once, then: hashed as the input (when
//! its pin is still to be checked), patched for each image (a copy only where a patch
//! falls), hashed as that image's head, and written to it, unless the image is a
//! copy-on-write clone of the ISO, whose unchanged bytes are already there (its few
//! patches are written at the end). Hashing runs on one thread per hash and writing on
//! one thread per image, fed through shared chunks from a small pool: memory stays flat
//! whatever the ISO's size, and the reads, writes and hashes overlap.
use super::error::ImageError;
use super::patch::Patch;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Large reads and writes: a 2 GiB ISO is ~500 of each.
const CHUNK: usize = 4 << 20;
/// Chunks in flight; bounds memory to POOL × CHUNK.
const POOL: usize = 6;

/// One image being written from the ISO.
pub(super) struct Output<'a> {
    pub file: &'a File,
    /// The file already holds the ISO's bytes (a reflink/clonefile copy).
    pub cloned: bool,
    /// Sorted, non-overlapping writes into the ISO's bytes.
    pub patches: &'a [Patch],
}

/// What the pass found.
pub(super) struct Copied {
    /// The input's SHA-256, when it was asked for.
    pub iso_sha256: Option<String>,
    /// Each output's hash, over the patched ISO so far (the caller goes on hashing).
    pub heads: Vec<Sha256>,
}

/// A chunk of the ISO, shared by the threads that hash it; its buffer goes back to the
/// pool when the last of them is done.
struct Chunk {
    data: Vec<u8>,
    len: usize,
    pool: Option<mpsc::Sender<Vec<u8>>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let _ = pool.send(std::mem::take(&mut self.data));
        }
    }
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// Streams the first `iso_len` bytes of `iso` into every output, patched.
///
/// The work is spread over threads so that no one of them holds the others up: this
/// one reads and patches; one thread per hash (the input's pin, each output's head);
/// one writer per output that is not a clone. The chunks in flight are bounded by the
/// pool, so a slow disk or a slow hash makes the reader wait, never memory grow.
pub(super) fn copy(
    iso: &Path,
    iso_len: u64,
    hash_input: bool,
    outputs: &[Output],
    on_bytes: &dyn Fn(u64),
    cancel: &AtomicBool,
) -> Result<Copied> {
    let name = iso.display();
    let mut src = File::open(iso).with_context(|| format!("opening {name}"))?;
    let hashers = usize::from(hash_input) + outputs.len();
    std::thread::scope(|s| -> Result<Copied> {
        let mut feeds = Vec::with_capacity(hashers);
        let mut threads = Vec::with_capacity(hashers);
        for _ in 0..hashers {
            let (tx, rx) = mpsc::channel::<Arc<Chunk>>();
            feeds.push(tx);
            threads.push(s.spawn(move || {
                let mut h = Sha256::new();
                for chunk in rx {
                    h.update(chunk.bytes());
                }
                h
            }));
        }
        let mut writes = Vec::with_capacity(outputs.len());
        let mut writers = Vec::with_capacity(outputs.len());
        for out in outputs {
            if out.cloned {
                writes.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel::<(u64, Arc<Chunk>)>();
            let file = out.file;
            writes.push(Some(tx));
            writers.push(s.spawn(move || -> Result<()> {
                for (at, chunk) in rx {
                    let mut f = file;
                    f.write_all(chunk.bytes())
                        .context("writing the image (is the disk full?)")?;
                    crate::fsutil::start_writeback(file, at, chunk.len as u64);
                }
                Ok(())
            }));
        }
        let (give_back, take) = mpsc::channel::<Vec<u8>>();
        let mut made = 0;
        let mut run = || -> Result<()> {
            let mut at = 0u64;
            while at < iso_len {
                if cancel.load(Ordering::SeqCst) {
                    return Err(ImageError::Interrupted.into());
                }
                let mut data = if made < POOL {
                    made += 1;
                    vec![0u8; CHUNK]
                } else {
                    take.recv().expect("the pool's sender lives here")
                };
                let len = CHUNK.min((iso_len - at) as usize);
                src.read_exact(&mut data[..len])
                    .with_context(|| format!("reading {name} (did it change?)"))?;
                let chunk = Arc::new(Chunk {
                    data,
                    len,
                    pool: Some(give_back.clone()),
                });
                let mut feed = feeds.iter();
                if hash_input {
                    let _ = feed.next().expect("one feed per hash").send(chunk.clone());
                }
                for ((out, feed), write) in outputs.iter().zip(feed).zip(&writes) {
                    let mine = match patched(out.patches, at, chunk.bytes()) {
                        Some(copy) => Arc::new(Chunk {
                            len: copy.len(),
                            data: copy,
                            pool: None,
                        }),
                        None => chunk.clone(),
                    };
                    let _ = feed.send(mine.clone());
                    if let Some(write) = write {
                        // A writer only hangs up on an error, which it returns.
                        write
                            .send((at, mine))
                            .map_err(|_| anyhow::anyhow!("the image writer stopped"))?;
                    }
                }
                on_bytes(len as u64);
                at += len as u64;
            }
            Ok(())
        };
        let ran = run();
        drop(feeds);
        drop(writes);
        let wrote = writers
            .into_iter()
            .map(|t| t.join().expect("a writing thread does not panic"))
            .collect::<Result<Vec<()>>>();
        let mut hashes: Vec<Sha256> = threads
            .into_iter()
            .map(|t| t.join().expect("a hashing thread does not panic"))
            .collect();
        // The writer's own error (a full disk) says more than the reader's "stopped".
        wrote?;
        ran?;
        for out in outputs.iter().filter(|o| o.cloned) {
            let mut f = out.file;
            for p in out.patches {
                f.seek(SeekFrom::Start(p.at))?;
                f.write_all(&p.bytes).context("writing the image")?;
            }
        }
        let iso_sha256 = hash_input.then(|| hex::encode(hashes.remove(0).finalize()));
        Ok(Copied {
            iso_sha256,
            heads: hashes,
        })
    })
}

/// `chunk` (at byte `at` of the ISO) with the parts of `patches` that fall inside it,
/// or `None` when none does.
fn patched(patches: &[Patch], at: u64, chunk: &[u8]) -> Option<Vec<u8>> {
    let end = at + chunk.len() as u64;
    let hits = |p: &&Patch| p.at < end && p.at + p.bytes.len() as u64 > at;
    patches.iter().find(hits)?;
    let mut copy = chunk.to_vec();
    apply(patches, at, &mut copy);
    Some(copy)
}

/// Copies the parts of `patches` that fall inside the chunk at `at`.
pub(super) fn apply(patches: &[Patch], at: u64, buf: &mut [u8]) {
    let end = at + buf.len() as u64;
    for p in patches {
        let p_end = p.at + p.bytes.len() as u64;
        if p_end <= at || p.at >= end {
            continue;
        }
        let from = p.at.max(at);
        let to = p_end.min(end);
        buf[(from - at) as usize..(to - at) as usize]
            .copy_from_slice(&p.bytes[(from - p.at) as usize..(to - p.at) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_apply_across_chunk_edges() {
        let patches = vec![Patch {
            at: 6,
            bytes: vec![1, 2, 3, 4],
        }];
        let mut a = vec![0u8; 8];
        apply(&patches, 0, &mut a);
        assert_eq!(a, [0, 0, 0, 0, 0, 0, 1, 2]);
        let mut b = vec![0u8; 8];
        apply(&patches, 8, &mut b);
        assert_eq!(b, [3, 4, 0, 0, 0, 0, 0, 0]);
        assert_eq!(patched(&patches, 16, &[0u8; 8]), None);
        assert_eq!(patched(&patches, 8, &[0u8; 8]).unwrap(), b);
    }
}
