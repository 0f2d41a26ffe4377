//! HTTP downloads into the content-addressed cache: a partial file per URL that resumes
//! with a Range request after an interruption, hashed as it streams, and moved under
//! `sha256/<hex>` only once its hash is known (the caller decides if it is the right one).
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Interruptions in a row without progress before giving up (the partial file stays, so
/// the next run resumes anyway).
const MAX_RESUMES: u32 = 5;

/// `out/cache`: `sha256/<hex>` holds verified files, `partial/` unfinished downloads.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
        }
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// The cached file with this hash. It is hashed again only when its size or
    /// modification time changed since it was last verified (recorded beside it in
    /// `<hex>.verified`); a corrupt entry is removed.
    pub fn get(&self, sha256: &str) -> Result<Option<PathBuf>> {
        let path = self.path_for(sha256);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        let record = record_path(&path);
        if std::fs::read_to_string(&record).ok() == Some(stamp(&meta)) {
            return Ok(Some(path));
        }
        if crate::fsutil::sha256_file(&path)? == sha256 {
            write_record(&path)?;
            return Ok(Some(path));
        }
        eprintln!(
            "cache: {} does not match its name any more; removing it and downloading again",
            path.display()
        );
        remove_if_exists(&record)?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(None)
    }

    /// Moves a verified download into the cache under its hash, and records it as
    /// verified.
    pub fn insert(&self, file: &Path, sha256: &str) -> Result<PathBuf> {
        let dest = self.path_for(sha256);
        let dir = crate::fsutil::parent_dir(&dest);
        crate::fsutil::create_dirs(dir)?;
        crate::fsutil::set_mode(file, 0o644)?;
        std::fs::rename(file, &dest)
            .with_context(|| format!("moving {} to {}", file.display(), dest.display()))?;
        write_record(&dest)?;
        Ok(dest)
    }

    /// One partial file per URL, so an interrupted download resumes on the next run.
    pub fn partial_path(&self, url: &str) -> PathBuf {
        let key = &crate::fsutil::sha256_hex(url.as_bytes())[..32];
        self.root.join("partial").join(format!("{key}.part"))
    }
}

/// `sha256/<hex>.verified`: the size and modification time the entry had when its hash
/// was last checked.
fn record_path(entry: &Path) -> PathBuf {
    entry.with_extension("verified")
}

/// Size and modification time (ns), as a record holds them.
fn stamp(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{} {mtime}\n", meta.len())
}

fn write_record(entry: &Path) -> Result<()> {
    let meta = std::fs::metadata(entry).with_context(|| format!("reading {}", entry.display()))?;
    crate::fsutil::write_atomic(&record_path(entry), stamp(&meta).as_bytes(), 0o644)
}

/// What to download and how to talk about it.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub url: &'a str,
    /// For messages, e.g. "K3s v1.28.15+k3s1 binary".
    pub label: &'a str,
    /// What to check when the file is not there, e.g. "k3s.version / the mirror".
    pub hint: &'a str,
    /// The profile key that sets the URL, for "point ... at a reachable mirror".
    pub url_key: &'a str,
}

/// A finished download, not yet in the cache.
#[derive(Debug)]
pub struct Downloaded {
    pub partial: PathBuf,
    pub sha256: String,
    /// Some bytes came through a Range request (this run's or an earlier run's).
    pub resumed: bool,
}

fn client_for(url: &str) -> Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder()
        .user_agent(concat!("chocoimg/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // In blocking reqwest this bounds each read, not the whole transfer.
        .timeout(Duration::from_secs(60));
    // A local mirror (or test server) must never be sent through a configured proxy.
    if is_loopback(url) {
        builder = builder.no_proxy();
    }
    builder.build().context("setting up the HTTP client")
}

fn is_loopback(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Explains a failed request: the URL, what went wrong, and what to check.
fn request_error(src: &Source, err: reqwest::Error) -> anyhow::Error {
    let what = if err.is_connect() {
        "cannot connect to"
    } else if err.is_timeout() {
        "timed out talking to"
    } else {
        "request failed for"
    };
    anyhow!(err).context(format!(
        "{what} {} ({}); check the network, or point {} at a reachable mirror",
        src.url, src.label, src.url_key
    ))
}

fn status_error(src: &Source, status: StatusCode) -> anyhow::Error {
    if status == StatusCode::NOT_FOUND {
        crate::errors::BadInput(format!(
            "no such file at {} (HTTP 404, {}): check {}",
            src.url, src.label, src.hint
        ))
        .into()
    } else {
        anyhow!(
            "HTTP {status} from {} ({}); try again later, or check {}",
            src.url,
            src.label,
            src.hint
        )
    }
}

/// Fetches a small text file (a checksum list) into memory.
pub fn fetch_text(src: &Source) -> Result<String> {
    let resp = client_for(src.url)?
        .get(src.url)
        .send()
        .map_err(|e| request_error(src, e))?;
    if !resp.status().is_success() {
        return Err(status_error(src, resp.status()));
    }
    resp.text().map_err(|e| request_error(src, e))
}

/// Downloads `src` into its partial file, resuming what an earlier attempt left, and
/// hashes it. Interruptions are retried with a Range request; a server that answers the
/// Range with 200 gets a fresh start.
pub fn download(cache: &Cache, src: &Source, progress_bars: bool) -> Result<Downloaded> {
    let partial = cache.partial_path(src.url);
    let dir = crate::fsutil::parent_dir(&partial);
    crate::fsutil::create_dirs(dir)?;
    let client = client_for(src.url)?;
    let started = Instant::now();
    let mut resumes = 0;
    let mut resumed = false;
    let mut first_attempt = true;
    let mut announced = false;
    let mut bar: Option<ProgressBar> = None;
    loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let mut req = client.get(src.url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let resp = req.send().map_err(|e| {
            let err = request_error(src, e);
            if have > 0 {
                err.context(format!(
                    "{} of {} is kept in {}; run again to resume",
                    HumanBytes(have),
                    src.label,
                    partial.display()
                ))
            } else {
                err
            }
        })?;
        let status = resp.status();
        let (start, total) = if status == StatusCode::PARTIAL_CONTENT && have > 0 {
            match parse_content_range(resp.headers().get(CONTENT_RANGE)) {
                Some((first, total)) if first == have => {
                    resumed = true;
                    (have, total)
                }
                _ => {
                    // Not the bytes we asked for: start over rather than splice garbage.
                    remove_if_exists(&partial)?;
                    resumes += 1;
                    if resumes > MAX_RESUMES {
                        bail!("{} answers Range requests with the wrong bytes", src.url);
                    }
                    continue;
                }
            }
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // The partial file is longer than the file now is: start over.
            remove_if_exists(&partial)?;
            resumes += 1;
            if resumes > MAX_RESUMES {
                bail!("{} keeps refusing Range requests (HTTP 416)", src.url);
            }
            continue;
        } else if status.is_success() {
            if have > 0 {
                say(
                    &bar,
                    format!(
                        "{} does not resume downloads (HTTP {status} to a Range request); \
                         starting {} over",
                        src.url, src.label
                    ),
                );
            }
            (0, resp.content_length())
        } else {
            return Err(status_error(src, status));
        };

        if !announced {
            announced = true;
            let size = total.map(|t| HumanBytes(t).to_string());
            if progress_bars {
                let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                pb.set_style(crate::progress::bar_style());
                pb.set_message(src.label.to_string());
                bar = Some(pb);
            } else {
                eprintln!(
                    "downloading {} from {} ({})",
                    src.label,
                    src.url,
                    size.as_deref().unwrap_or("size unknown")
                );
            }
        }
        if start > 0 && first_attempt {
            say(
                &bar,
                format!(
                    "resuming {} at {} (left by an earlier run)",
                    src.label,
                    HumanBytes(start)
                ),
            );
        }

        // Hash what is already there, then keep hashing as bytes arrive.
        let mut hasher = sha2::Sha256::new();
        let mut file = if start > 0 {
            let mut existing =
                File::open(&partial).with_context(|| format!("opening {}", partial.display()))?;
            std::io::copy(&mut existing, &mut hasher)
                .with_context(|| format!("reading {}", partial.display()))?;
            OpenOptions::new().append(true).open(&partial)
        } else {
            File::create(&partial)
        }
        .with_context(|| format!("opening {}", partial.display()))?;
        if let Some(pb) = &bar {
            pb.set_position(start);
        }
        first_attempt = false;

        let mut written = start;
        let mut resp = resp;
        let mut buf = vec![0u8; 256 * 1024];
        let interrupted = loop {
            match resp.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n])
                        .with_context(|| format!("writing {}", partial.display()))?;
                    hasher.update(&buf[..n]);
                    written += n as u64;
                    if let Some(pb) = &bar {
                        pb.set_position(written);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The io::Error wraps reqwest's; its causes say what actually happened.
                Err(e) => break Some(format!("{:#}", anyhow::Error::from(e))),
            }
        };
        file.flush()
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        drop(file);
        let short = match total {
            Some(t) if written < t => {
                Some(format!("connection closed after {written} of {t} bytes"))
            }
            _ => None,
        };
        if let Some(why) = interrupted.or(short) {
            // Only attempts that bring nothing count: a slow, flaky line still finishes.
            if written == start {
                resumes += 1;
            }
            if resumes > MAX_RESUMES {
                if let Some(pb) = &bar {
                    pb.abandon();
                }
                bail!(
                    "downloading {} from {} was interrupted {MAX_RESUMES} times without progress \
                     (last: {why}); run the build again to resume from {} (kept in {})",
                    src.label,
                    src.url,
                    HumanBytes(written),
                    partial.display()
                );
            }
            say(
                &bar,
                format!(
                    "download of {} interrupted at {} ({why}); resuming",
                    src.label,
                    HumanBytes(written)
                ),
            );
            continue;
        }

        let sha256 = hex::encode(hasher.finalize());
        let secs = started.elapsed().as_secs_f64().max(0.001);
        if let Some(pb) = &bar {
            pb.finish_and_clear();
        }
        eprintln!(
            "downloaded {}: {} in {:.1}s ({}/s)",
            src.label,
            HumanBytes(written),
            secs,
            HumanBytes((written as f64 / secs) as u64)
        );
        return Ok(Downloaded {
            partial,
            sha256,
            resumed,
        });
    }
}

/// A line for the person watching: above the bar when there is one.
fn say(bar: &Option<ProgressBar>, line: String) {
    match bar {
        Some(pb) => pb.println(line),
        None => eprintln!("{line}"),
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) -> (FIRST, Some(TOTAL)).
fn parse_content_range(value: Option<&reqwest::header::HeaderValue>) -> Option<(u64, Option<u64>)> {
    let text = value?.to_str().ok()?;
    let rest = text.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, total))
}

pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn content_range_parses() {
        let v = HeaderValue::from_static("bytes 100-199/200");
        assert_eq!(parse_content_range(Some(&v)), Some((100, Some(200))));
        let v = HeaderValue::from_static("bytes 5-9/*");
        assert_eq!(parse_content_range(Some(&v)), Some((5, None)));
        let v = HeaderValue::from_static("items 1-2/3");
        assert_eq!(parse_content_range(Some(&v)), None);
        assert_eq!(parse_content_range(None), None);
    }

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8080/x"));
        assert!(is_loopback("http://localhost/x"));
        assert!(is_loopback("http://[::1]:1/x"));
        assert!(!is_loopback("https://github.com/k3s-io"));
    }
}
