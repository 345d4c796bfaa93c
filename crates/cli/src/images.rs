//! Collects image files from the paths given on the command line.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Files given directly are taken as they are; folders are searched recursively for PNG and
/// JPEG files, in name order. Returns the files and whether any folder was given.
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, bool)> {
    let mut files = Vec::new();
    let mut any_folder = false;
    for path in paths {
        if path.is_dir() {
            any_folder = true;
            walk(path, &mut files)?;
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    Ok((files, any_folder))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}
