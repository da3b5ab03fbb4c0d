//! The state dir and the simulator's own files in it.
//!
//! With `--guests lxc` the simulator runs as root, and its state dir holds the TLS key,
//! felhom's token, the side-channel secret and `state.json`; a state dir given as a symlink,
//! or owned by someone else, would let another local user point those writes (or the
//! reads that decide what the simulator believes) at files of their choosing. So:
//!
//! - [`prepare_state_dir`]: the state dir is created private (0700; 0711 for the lxc
//!   runtime, whose unprivileged guests must traverse it to reach their rootfs), and an
//!   existing one that is a symlink, not a directory, or owned by another user is refused
//!   naming the path and the rule.
//! - [`write_atomic`]: a file is written beside its final name (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//!   the mode given at creation), fsynced, renamed over the final name, and the directory is
//!   fsynced, so a crash or power loss leaves the old or the new file whole, never a
//!   truncated one (`state.json` after every mutation, the 0600 secrets).
//! - [`read`]: a file is opened with `O_NOFOLLOW|O_NONBLOCK` and must be a regular file (a
//!   symlink, FIFO or device planted under the name is refused, not followed or waited on).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode a new state dir gets: private, or traversable for the lxc runtime's guests.
pub fn state_dir_mode(lxc: bool) -> u32 {
    if lxc {
        0o711
    } else {
        0o700
    }
}

/// Create the state dir (with `mode`) if it is missing; refuse one that is a symlink, not a
/// directory, or owned by a user other than the simulator's.
pub fn prepare_state_dir(dir: &Path, mode: u32) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("state dir {shown}: create its parent: {e}"))?;
            }
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .or_else(|e| match e.kind() {
                    // Made by someone else in between: checked below like any existing one.
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| format!("state dir {shown}: create: {e}"))?;
            // The umask may have taken bits the guests need.
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == euid()) {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("state dir {shown}: chmod: {e}"))?;
            }
            check_existing(dir)
        }
        Err(e) => Err(format!("state dir {shown}: {e}")),
        Ok(_) => check_existing(dir),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_existing(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("state dir {shown}: {e}"))?;
    if m.file_type().is_symlink() {
        return Err(format!(
            "state dir {shown} is a symlink; give the directory itself (a link could be re-pointed by whoever owns it)"
        ));
    }
    if !m.is_dir() {
        return Err(format!("state dir {shown} is not a directory"));
    }
    let me = euid();
    if m.uid() != me {
        return Err(format!(
            "state dir {shown} is owned by uid {}, not by the simulator's user (uid {me}); use a directory of your own, e.g. one made by `mktemp -d`",
            m.uid()
        ));
    }
    Ok(())
}

/// Replace `dir/name` with `bytes` durably: a temporary file beside it (created with
/// `mode`, never through a symlink), fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover of a crash between create and rename (unlink never follows a link).
    let _ = std::fs::remove_file(&tmp);
    let done = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// `dir/name` if it exists: opened without following a symlink and without blocking, and
/// only if it is a regular file. At most `limit` bytes are read.
pub fn read(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "{} is a symlink; the simulator's files are never read through one",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let m = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut buf = Vec::new();
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_state_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = prepare_state_dir(&link, 0o700).unwrap_err();
        assert!(e.contains("is a symlink"), "{e}");
        std::fs::write(t.path().join("file"), "x").unwrap();
        let e = prepare_state_dir(&t.path().join("file"), 0o700).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        // A new one is made private.
        let new = t.path().join("a/b/state");
        prepare_state_dir(&new, 0o700).unwrap();
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        prepare_state_dir(&new, 0o700).unwrap();
    }

    #[test]
    fn a_state_dir_of_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        std::fs::create_dir(&d).unwrap();
        if euid() == 0 {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = prepare_state_dir(&d, 0o700).unwrap_err();
            assert!(e.contains("owned by uid 65534"), "{e}");
        } else {
            // Not root: a directory of root's stands in for another user's.
            let e = prepare_state_dir(Path::new("/"), 0o700).unwrap_err();
            assert!(e.contains("owned by uid 0"), "{e}");
        }
    }

    #[test]
    fn files_are_written_whole_with_their_mode_and_never_read_through_links() {
        let t = tempfile::tempdir().unwrap();
        write_atomic(t.path(), "secret", b"one", 0o600).unwrap();
        let p = t.path().join("secret");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        // A leftover temporary file does not stop the next write.
        std::fs::write(t.path().join(".secret.tmp"), "junk").unwrap();
        write_atomic(t.path(), "secret", b"two", 0o600).unwrap();
        assert_eq!(read(&p, 100).unwrap().unwrap(), b"two");
        assert!(!t.path().join(".secret.tmp").exists());
        assert_eq!(read(&t.path().join("missing"), 100).unwrap(), None);
        // A planted link at the temporary name is replaced, never written through.
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join(".secret.tmp")).unwrap();
        write_atomic(t.path(), "secret", b"three", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // A link or a FIFO at the name is refused, not followed or waited on.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(read(&link, 100).unwrap_err().contains("symlink"));
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read(&fifo, 100).unwrap_err().contains("not a regular file"));
    }
}
