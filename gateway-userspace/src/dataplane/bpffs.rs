//! Making sure the pin directory lives on a bpffs, mounting `/sys/fs/bpf` when it is the well-known place and
//! nothing is mounted there yet.
use std::path::Path;

use super::DataplaneError;

/// `f_type` of a bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Creates `dir` on a bpffs. If `dir` is under `/sys/fs/bpf` and no bpffs is mounted there, mounts one (as the
/// kernel documentation and systemd do). Any other location must already be a bpffs.
pub fn ensure_dir(dir: &Path) -> Result<(), DataplaneError> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            DataplaneError::Bpffs(format!(
                "mounting bpffs at /sys/fs/bpf: {e} (are you root?)"
            ))
        })?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DataplaneError::Bpffs(format!("creating {}: {e}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Bpffs(format!(
            "{} is not on a bpffs; mount one (mount -t bpf bpf <dir>) or choose --bpffs-root under /sys/fs/bpf",
            dir.display()
        )));
    }
    Ok(())
}
