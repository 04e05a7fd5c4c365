//! Opening a model's files defensively: only regular files are read or mapped (a directory,
//! /dev/zero or a FIFO gets a one-line error instead of an endless read or an odd OS error),
//! text files are read only up to a limit per kind of file, and the shards an index names must
//! lie inside the model's folder.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Limits for the small JSON files of a Hugging Face folder.
pub(crate) const CONFIG_JSON_LIMIT: u64 = 16 << 20;
/// A safetensors index lists one line per tensor: a few MiB even for the largest models.
pub(crate) const SAFETENSORS_INDEX_LIMIT: u64 = 64 << 20;

/// Opens `path` for reading if it is a regular file (after following symlinks); `kind` names
/// the file in errors ("config.json", "safetensors shard").
pub(crate) fn open_regular(path: &Path, kind: &str) -> Result<(File, Metadata)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(path.to_path_buf()),
        _ => Error::io(path, e),
    })?;
    if !meta.is_file() {
        return Err(not_regular(path, kind, &meta));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // The path may have been swapped between the two calls: check what was opened.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, kind, &meta));
    }
    Ok((file, meta))
}

/// Opens a file of `kind` that must be a regular file of at most `limit` bytes.
pub(crate) fn open_limited(path: &Path, kind: &str, limit: u64) -> Result<File> {
    let (file, meta) = open_regular(path, kind)?;
    if meta.len() > limit {
        return Err(too_big(path, kind, meta.len(), limit));
    }
    Ok(file)
}

/// Reads a text file of `kind` that must be a regular file of at most `limit` bytes.
pub(crate) fn read_text(path: &Path, kind: &str, limit: u64) -> Result<String> {
    let file = open_limited(path, kind, limit)?;
    // The file may grow after the check: never read past the limit.
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(path, kind, bytes.len() as u64, limit));
    }
    String::from_utf8(bytes).map_err(|e| {
        file_error(
            kind,
            format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The path of a shard named `name` by the index in `dir`, which must stay inside `dir`: no
/// absolute path, no `..`, and no symlink that resolves outside the folder.
pub(crate) fn shard_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let escapes = |why: &str| {
        file_error(
            "model.safetensors.index.json",
            format!(
                "shard '{name}' {why}; shards must be files inside the model folder {}",
                dir.display()
            ),
        )
    };
    let relative = Path::new(name);
    if name.is_empty() {
        return Err(escapes("is an empty name"));
    }
    for part in relative.components() {
        match part {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(escapes("goes up with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(escapes("is an absolute path"));
            }
        }
    }
    let path = dir.join(relative);
    // A symlink inside the folder may still point outside it: compare the resolved paths.
    let (Ok(real_dir), Ok(real_path)) = (dir.canonicalize(), path.canonicalize()) else {
        // A missing shard is reported when it is opened.
        return Ok(path);
    };
    if !real_path.starts_with(&real_dir) {
        return Err(escapes(&format!(
            "resolves to {}, outside the folder",
            real_path.display()
        )));
    }
    Ok(path)
}

fn file_error(kind: &str, reason: String) -> Error {
    Error::File {
        kind: kind.to_string(),
        reason,
    }
}

fn not_regular(path: &Path, kind: &str, meta: &Metadata) -> Error {
    let what = file_type_name(meta);
    file_error(
        kind,
        format!("{} is {what}, not a regular file", path.display()),
    )
}

fn too_big(path: &Path, kind: &str, size: u64, limit: u64) -> Error {
    file_error(
        kind,
        format!(
            "{} is {}, over the {} limit for {kind}",
            path.display(),
            human_bytes(size),
            human_bytes(limit)
        ),
    )
}

fn file_type_name(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// 3 GB-style sizes for messages: binary units, one decimal where it helps.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(3 * (1 << 30) + (1 << 29)), "3.5 GiB");
    }
}
