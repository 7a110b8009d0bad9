//! The `sftp` subsystem (russh-sftp speaks the protocol; this maps its
//! requests onto the workspace's files, as the agent's user). Relative
//! paths are from the home directory, as OpenSSH's `sftp-server` does.
//! Used by `sftp`, `scp` (which speaks SFTP since OpenSSH 9) and the IDEs.

use russh_sftp::protocol::{Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version};
use russh_sftp::server::StatusReply;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Most handles (open files and directories) one session may hold.
const MAX_HANDLES: usize = 1024;
/// Largest read answered at once (the protocol's clients ask for 32–256 KiB).
const MAX_READ: u32 = 256 << 10;
/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;

enum Open {
    File(tokio::fs::File),
    /// A directory's entries, read once at OPENDIR and handed out in batches.
    Dir(std::vec::IntoIter<File>),
}

#[derive(Default)]
pub struct Sftp {
    handles: HashMap<String, Open>,
    next: u64,
    home: Option<PathBuf>,
}

impl Sftp {
    fn path(&mut self, p: &str) -> PathBuf {
        let home = self.home.get_or_insert_with(|| {
            std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_dir()).unwrap_or_else(|| "/".into())
        });
        if p.is_empty() || p == "." {
            home.clone()
        } else {
            home.join(p)
        }
    }

    fn insert(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.into());
        }
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        Ok(handle)
    }

    fn file(&mut self, handle: &str) -> Result<&mut tokio::fs::File, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusReply::new(StatusCode::Failure).with_message("no such open file")),
        }
    }
}

fn ok(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Ok".into(), language_tag: "en-US".into() }
}

/// An I/O error as the protocol's status, with the error's text.
fn status(e: std::io::Error) -> StatusReply {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply::new(code).with_message(e.to_string())
}

/// `ls -l`-like long name (clients show it as is).
fn long_name(name: &str, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let kind = if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = meta.mode();
    let bits: String = (0..9).rev().map(|i| if mode & (1 << i) == 0 { '-' } else { ['x', 'w', 'r'][i % 3] }).collect();
    format!("{kind}{bits} 1 {} {} {:>8} {name}", meta.uid(), meta.gid(), meta.len())
}

async fn apply(path: &Path, attrs: &FileAttributes) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = attrs.permissions {
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777)).await?;
    }
    if let Some(size) = attrs.size {
        tokio::fs::OpenOptions::new().write(true).open(path).await?.set_len(size).await?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(atime.into());
        let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
        let file = std::fs::File::options().write(true).open(path).or_else(|_| std::fs::File::open(path))?;
        file.set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(mt))?;
    }
    Ok(())
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let mut options = tokio::fs::OpenOptions::new();
        options
            .read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                options.create_new(true);
            } else {
                options.create(true);
            }
        }
        options.mode(attrs.permissions.map_or(0o666, |p| p & 0o7777));
        let file = options.open(&path).await.map_err(status)?;
        Ok(Handle { id, handle: self.insert(Open::File(file))? })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File(mut f)) => f.flush().await.map_err(status)?,
            Some(Open::Dir(_)) => {}
            None => return Err(StatusReply::new(StatusCode::Failure).with_message("no such handle")),
        }
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(status)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            match file.read(&mut data[filled..]).await.map_err(status)? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 && !data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(status)?;
        file.write_all(&data).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = tokio::fs::symlink_metadata(self.path(&path)).await.map_err(status)?;
        Ok(Attrs { id, attrs: FileAttributes::from(&meta) })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let meta = self.file(&handle)?.metadata().await.map_err(status)?;
        Ok(Attrs { id, attrs: FileAttributes::from(&meta) })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = tokio::fs::metadata(self.path(&path)).await.map_err(status)?;
        Ok(Attrs { id, attrs: FileAttributes::from(&meta) })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        apply(&self.path(&path), &attrs).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        use std::os::unix::fs::PermissionsExt;
        let file = self.file(&handle)?;
        if let Some(mode) = attrs.permissions {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777)).await.map_err(status)?;
        }
        if let Some(size) = attrs.size {
            file.set_len(size).await.map_err(status)?;
        }
        if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(atime.into());
            let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
            let std_file = file.try_clone().await.map_err(status)?.into_std().await;
            std_file.set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(mt)).map_err(status)?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let dir = self.path(&path);
        let mut entries = vec![];
        for name in [".", ".."] {
            if let Ok(meta) = tokio::fs::metadata(dir.join(name)).await {
                entries.push(File { filename: name.into(), longname: long_name(name, &meta), attrs: (&meta).into() });
            }
        }
        let mut read = tokio::fs::read_dir(&dir).await.map_err(status)?;
        while let Some(entry) = read.next_entry().await.map_err(status)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(meta) = tokio::fs::symlink_metadata(entry.path()).await {
                entries.push(File { longname: long_name(&name, &meta), filename: name, attrs: (&meta).into() });
            }
        }
        Ok(Handle { id, handle: self.insert(Open::Dir(entries.into_iter()))? })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir(entries)) = self.handles.get_mut(&handle) else {
            return Err(StatusReply::new(StatusCode::Failure).with_message("no such open directory"));
        };
        let files: Vec<File> = entries.by_ref().take(DIR_BATCH).collect();
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        tokio::fs::remove_file(self.path(&filename)).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        tokio::fs::create_dir(&path).await.map_err(status)?;
        if attrs.permissions.is_some() {
            apply(&path, &FileAttributes { permissions: attrs.permissions, ..FileAttributes::empty() })
                .await
                .map_err(status)?;
        }
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        tokio::fs::remove_dir(self.path(&path)).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        // A path that does not exist yet (an upload's target) is made absolute as it is.
        let real = tokio::fs::canonicalize(&path).await.unwrap_or(path);
        let name = real.to_string_lossy().into_owned();
        Ok(Name { id, files: vec![File::dummy(name)] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        tokio::fs::rename(from, to).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = tokio::fs::read_link(self.path(&path)).await.map_err(status)?;
        Ok(Name { id, files: vec![File::dummy(target.to_string_lossy().into_owned())] })
    }

    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Result<Status, Self::Error> {
        tokio::fs::symlink(targetpath, self.path(&linkpath)).await.map_err(status)?;
        Ok(ok(id))
    }
}
