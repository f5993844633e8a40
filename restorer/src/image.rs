//! An image directory loaded for a restore: every record read and checked
//! (trust, layout, identities of files, credentials a restore can give),
//! before anything is made.

use crate::{RestoreError, RestoreOptions, Result};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_wire as wire;

/// A whole image, read and verified.
#[derive(Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub inventory: wire::Inventory,
    pub core: wire::Core,
    pub mm: wire::Mm,
    pub files: wire::Files,
}

/// An image decides what a restore runs and with which credentials, so
/// only one that nobody but root (or this tern's own user) could have
/// written is read: the directory and every file in it owned by one of
/// them and not writable by group or others.
pub(crate) fn check_image_trusted(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let check = |path: &Path, m: &std::fs::Metadata| -> Result<()> {
        let why = if m.uid() != 0 && m.uid() != me {
            format!("is owned by uid {}", m.uid())
        } else if m.mode() & 0o022 != 0 {
            format!(
                "is writable by group or others (mode {:o})",
                m.mode() & 0o7777
            )
        } else {
            return Ok(());
        };
        Err(RestoreError::BadImage {
            dir: dir.to_path_buf(),
            what: format!(
                "{} {why}: an image decides what runs and with which credentials, so tern only restores images nobody but root could have written (chown root / chmod go-w it if you trust it)",
                path.display()
            ),
        })
    };
    let meta = |p: &Path| {
        std::fs::metadata(p).map_err(|e| RestoreError::BadImage {
            dir: dir.to_path_buf(),
            what: format!("{}: {e}", p.display()),
        })
    };
    check(dir, &meta(dir)?)?;
    // Nor may anyone else be able to swap it, or a directory above it, for
    // another: every directory up to / is owned by root (or this user) and
    // writable by others only if sticky (like /tmp).
    let canonical = dir.canonicalize().map_err(|e| RestoreError::BadImage {
        dir: dir.to_path_buf(),
        what: format!("cannot resolve it: {e}"),
    })?;
    for up in canonical.ancestors().skip(1) {
        let m = meta(up)?;
        let sticky = m.mode() & 0o1000 != 0;
        if (m.uid() != 0 && m.uid() != me) || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: format!(
                    "{} (uid {}, mode {:o}) lets someone other than root replace the image: tern only restores images no one but root could have written",
                    up.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            });
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| RestoreError::BadImage {
        dir: dir.to_path_buf(),
        what: format!("cannot list it: {e}"),
    })?;
    for e in entries.flatten() {
        let path = e.path();
        let m = meta(&path)?;
        // Sub-directories are other images (pre-copy rounds), checked
        // when they are read.
        if !m.is_dir() {
            check(&path, &m)?;
        }
    }
    Ok(())
}

impl Image {
    /// A post-copy final image (some pages still at its source) can only be
    /// resumed by the `tern serve` that receives the rest.
    pub fn refuse_owed_pages(&self) -> Result<()> {
        if self.dir.join(wire::DEFERRED_FILE).exists() {
            return Err(self.bad(format!(
                "it has {}: some of its pages are still at the source (a post-copy migration's final image), so it cannot be restored from here",
                wire::DEFERRED_FILE
            )));
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Image> {
        check_image_trusted(dir)?;
        let inv_path = dir.join(wire::INVENTORY_FILE);
        if !inv_path.exists() {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: format!(
                    "{} is missing: not an image, or the dump did not finish",
                    wire::INVENTORY_FILE
                ),
            });
        }
        let inventory: wire::Inventory = wire::read_record(&inv_path, wire::RecordKind::Inventory)?;
        if inventory.pre_dump {
            return Err(RestoreError::BadImage {
                dir: dir.to_path_buf(),
                what: "is a pre-dump (memory only, taken while the program ran); restore the final `tern dump --parent` image instead".into(),
            });
        }
        let image = Image {
            dir: dir.to_path_buf(),
            inventory,
            core: wire::read_record(&dir.join(wire::CORE_FILE), wire::RecordKind::Core)?,
            mm: wire::read_record(&dir.join(wire::MM_FILE), wire::RecordKind::Mm)?,
            files: wire::read_record(&dir.join(wire::FILES_FILE), wire::RecordKind::Files)?,
        };
        image.validate()?;
        Ok(image)
    }

    /// Directories of the older images this one builds on, oldest first.
    pub fn ancestors(&self) -> Result<Vec<PathBuf>> {
        let mut chain: Vec<PathBuf> = Vec::new();
        let mut cur_dir = self.dir.clone();
        let mut parent = self.inventory.parent.clone();
        while let Some(p) = parent {
            let p = PathBuf::from(p);
            let pdir = if p.is_absolute() { p } else { cur_dir.join(p) };
            let canon = pdir.canonicalize().map_err(|e| {
                self.bad(format!(
                    "parent image {} cannot be opened: {e}",
                    pdir.display()
                ))
            })?;
            if chain.contains(&canon) || chain.len() > 1000 {
                return Err(self.bad(format!("the parent chain loops at {}", pdir.display())));
            }
            check_image_trusted(&canon)?;
            let inv: wire::Inventory = wire::read_record(
                &canon.join(wire::INVENTORY_FILE),
                wire::RecordKind::Inventory,
            )?;
            if inv.pid != self.inventory.pid {
                return Err(self.bad(format!(
                    "parent image {} is of process {}, not {}",
                    pdir.display(),
                    inv.pid,
                    self.inventory.pid
                )));
            }
            Self::check_round_records(&canon)?;
            chain.push(canon.clone());
            cur_dir = canon;
            parent = inv.parent;
        }
        chain.reverse();
        Ok(chain)
    }

    pub(crate) fn bad(&self, what: String) -> RestoreError {
        RestoreError::BadImage {
            dir: self.dir.clone(),
            what,
        }
    }

    /// The records of an older image of a chain that rebuilding does not read
    /// (its page table, its map, a tree round's listing) are read anyway:
    /// damage anywhere in a chain refuses it, and a later increment built
    /// on a damaged table would trust it.
    pub(crate) fn check_round_records(dir: &Path) -> Result<()> {
        let hashes = dir.join(wire::HASHES_FILE);
        if hashes.exists() {
            wire::hashes::read_page_hashes(&hashes)?;
        }
        let layout = dir.join(wire::LAYOUT_FILE);
        if layout.exists() {
            wire::read_record::<wire::Layout>(&layout, wire::RecordKind::Layout)?;
        }
        let tree = dir.join(wire::TREE_FILE);
        if tree.exists() {
            wire::read_record::<wire::Tree>(&tree, wire::RecordKind::Tree)?;
        }
        Ok(())
    }

    /// Structural checks a checksum cannot give: the records agree.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.core.threads.is_empty() || self.core.threads[0].tid != self.core.pid {
            return Err(self.bad("the first thread must be the main thread".into()));
        }
        if !(-1000..=1000).contains(&self.core.oom_score_adj) {
            return Err(self.bad(format!(
                "oom_score_adj {} is out of range",
                self.core.oom_score_adj
            )));
        }
        if self.core.sigactions.len() != 64 {
            return Err(self.bad(format!(
                "{} signal actions, expected 64",
                self.core.sigactions.len()
            )));
        }
        let page = tern_sys::page_size();
        if self.inventory.page_size != page {
            return Err(self.bad(format!(
                "page size {} differs from this machine's {page}",
                self.inventory.page_size
            )));
        }
        let mut prev_end = 0;
        for v in &self.mm.vmas {
            if v.start >= v.end || v.start % page != 0 || v.end % page != 0 || v.start < prev_end {
                return Err(self.bad(format!(
                    "mapping {:#x}-{:#x} is malformed or overlaps",
                    v.start, v.end
                )));
            }
            // Only the kernel's vsyscall page lives above user space.
            if v.end > USER_SPACE_END && v.kind != wire::VmaKind::Vsyscall {
                return Err(self.bad(format!(
                    "mapping {:#x}-{:#x} lies outside user space",
                    v.start, v.end
                )));
            }
            prev_end = v.end;
        }
        for f in &self.files.fds {
            if !(0..MAX_FD).contains(&f.fd) {
                return Err(self.bad(format!("fd number {} is out of range", f.fd)));
            }
        }
        for p in &self.files.pipes {
            if p.data.len() as u64 > u64::from(p.size) {
                return Err(self.bad(format!(
                    "pipe {} holds {} bytes, more than its capacity {}",
                    p.id,
                    p.data.len(),
                    p.size
                )));
            }
        }
        Ok(())
    }
}

/// End of x86-64 user space (47-bit addresses, top page excluded).
pub(crate) const USER_SPACE_END: u64 = 0x7fff_ffff_f000;
/// Largest fd number an image may name (the kernel's nr_open default).
pub(crate) const MAX_FD: i32 = 1 << 20;

/// Refuse a file that is not the one the image was made with (`at`: where
/// it is on this machine now, if it can be looked at yet).
pub(crate) fn check_same_file(f: &wire::FileIdentity, at: Option<String>) -> Result<()> {
    let Some(at) = at else {
        return Ok(());
    };
    let meta = std::fs::metadata(&at).map_err(|e| RestoreError::File {
        path: f.path.clone(),
        what: format!("needed by the image but cannot be opened: {e}"),
    })?;
    if meta.size() != f.size || meta.mtime() != f.mtime_sec || meta.mtime_nsec() != f.mtime_nsec {
        return Err(RestoreError::File {
            path: f.path.clone(),
            what: format!(
                "changed since the dump (size {} -> {}, mtime {}.{:09} -> {}.{:09}); refusing to map a different file",
                f.size,
                meta.size(),
                f.mtime_sec,
                f.mtime_nsec,
                meta.mtime(),
                meta.mtime_nsec()
            ),
        });
    }
    Ok(())
}

pub(crate) fn wait_pid_free(pid: i32, wait: Duration) -> Result<()> {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if t0.elapsed() >= wait {
            return Err(RestoreError::PidBusy {
                pid,
                waited_ms: t0.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Before anything is built: this tern can give the program every
/// capability the image says it had (a process can only drop them).
pub(crate) fn check_creds_reproducible(c: &wire::Creds) -> Result<()> {
    use tern_sys::proc::{cap_names, thread_creds};
    let tid = nix::unistd::gettid().as_raw();
    let own = thread_creds(std::process::id() as i32, tid)
        .map_err(|e| RestoreError::Creds(format!("reading tern's own credentials: {e}")))?;
    let missing_bounding = c.cap_bounding & !own.cap_bounding;
    if missing_bounding != 0 {
        return Err(RestoreError::Creds(format!(
            "its bounding set has {} which this tern's lacks (CapBnd {:#x})",
            cap_names(missing_bounding).join(", "),
            own.cap_bounding
        )));
    }
    let missing = (c.cap_permitted | c.cap_inheritable | c.cap_ambient) & !own.cap_permitted;
    if missing != 0 {
        return Err(RestoreError::Creds(format!(
            "it had {} which this tern does not hold (CapPrm {:#x})",
            cap_names(missing).join(", "),
            own.cap_permitted
        )));
    }
    Ok(())
}

/// Check, before any process is created, that everything outside the
/// image that it refers to is still there and unchanged.
pub(crate) fn check_outside_world(image: &Image, opts: &RestoreOptions) -> Result<()> {
    check_creds_reproducible(&image.core.creds)?;
    inherited_fds(image, opts)?;
    // In a mount namespace of its own the image's paths are the program's:
    // looked at where its bound directories are here (files on a file
    // system the restore makes anew cannot be looked at yet).
    let here = |path: &str| match &image.inventory.namespaces.mnt {
        None => Some(path.to_string()),
        Some(table) => tern_state::mounts::host_path(table, path),
    };
    for v in &image.mm.vmas {
        if let wire::VmaKind::File { file, .. } = &v.kind {
            check_same_file(file, here(&file.path))?;
        }
    }
    check_same_file(&image.mm.exe, here(&image.mm.exe.path))?;
    for fd in &image.files.fds {
        if let wire::FdKind::Path { path, .. } = &fd.kind {
            let Some(at) = here(path) else {
                continue;
            };
            if std::fs::symlink_metadata(at).is_err() {
                return Err(RestoreError::File {
                    path: path.clone(),
                    what: format!("open as fd {} in the image, but it no longer exists", fd.fd),
                });
            }
        }
    }
    Ok(())
}

/// The image's fds shared with the outside -> the fd of tern's given for
/// each ([`RestoreOptions::inherit_fds`]); refuses, naming the fd, if one
/// has none.
pub(crate) fn inherited_fds(image: &Image, opts: &RestoreOptions) -> Result<BTreeMap<i32, RawFd>> {
    let mut out = BTreeMap::new();
    for f in &image.files.fds {
        if let wire::FdKind::External { name, what, .. } = &f.kind {
            let tern_fd = opts
                .inherit_fds
                .get(name)
                .ok_or_else(|| RestoreError::NotInherited {
                    pid: image.core.pid,
                    fd: f.fd,
                    name: name.clone(),
                    what: what.clone(),
                })?;
            out.insert(f.fd, *tern_fd);
        }
    }
    Ok(out)
}

/// The first fd number above every one the image uses: where tern's own
/// pidfd waits in a puppet that takes fds from tern.
pub(crate) fn above_image_fds<'a>(images: impl IntoIterator<Item = &'a Image>) -> i32 {
    images
        .into_iter()
        .flat_map(|i| i.files.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2)
        .max(2)
        + 1
}
