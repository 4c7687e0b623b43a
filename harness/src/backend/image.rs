//! The local Redis image: no registry is reachable, so when the image is
//! missing it is built from the host's `redis-server` (DESIGN §5): a
//! `FROM scratch` Dockerfile (docker/redis-image/Dockerfile), the binary and
//! every library `ldd` lists at their absolute paths, empty /data and /tmp.
//! testcontainers sends that context to the engine's build API (BuildKit
//! needs nothing from a registry for `FROM scratch`); no `docker build`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testcontainers::runners::AsyncBuilder;
use testcontainers::GenericBuildableImage;
use tokio::sync::Mutex;

use super::docker_api::client;
use super::process::find_on_path;
use super::BackendError;

/// The image the docker backend runs (built locally when missing).
pub const IMAGE: &str = "keyshift/redis:local";
/// Names an existing image to run instead; it is never built.
const IMAGE_ENV: &str = "KEYSHIFT_REDIS_IMAGE";
/// The host's `redis-server --version` the image was built from; a host
/// upgrade rebuilds the image.
const VERSION_LABEL: &str = "keyshift.redis-version";
const DOCKERFILE: &str = include_str!("../../../docker/redis-image/Dockerfile");
/// Where the binary goes in the image (on the Dockerfile's PATH).
const BINARY_IN_IMAGE: &str = "/usr/local/bin/redis-server";
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// One build at a time in this process; across processes (nextest, parallel
/// `cargo test` runs) a lock file in the temp dir, and a failed build is fine
/// when the image exists afterwards.
static BUILD_LOCK: Mutex<()> = Mutex::const_new(());
const LOCK_FILE: &str = "keyshift-redis-image.lock";

/// The image to run, building `keyshift/redis:local` first if needed.
pub(super) async fn ensure_image() -> Result<String, BackendError> {
    if let Some(image) = std::env::var(IMAGE_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return Ok(image);
    }
    let _guard = BUILD_LOCK.lock().await;
    let host = host_redis().await;
    if image_is_current(host.as_ref()).await? {
        return Ok(IMAGE.to_string());
    }
    let _file_lock = lock_across_processes().await?;
    // Another process may have built it while this one waited.
    if image_is_current(host.as_ref()).await? {
        return Ok(IMAGE.to_string());
    }
    let (binary, version) = host.ok_or_else(|| no_host_redis(IMAGE))?;
    tracing::info!("building {IMAGE} from {}", binary.display());
    build(IMAGE, &binary, &version).await?;
    Ok(IMAGE.to_string())
}

/// Builds `image` (`name:tag`) from the host's redis-server the way a
/// missing `keyshift/redis:local` is built, whatever images exist: a test
/// checks the build under a name of its own.
#[doc(hidden)]
pub async fn build_from_host_redis(image: &str) -> Result<(), BackendError> {
    let (binary, version) = host_redis().await.ok_or_else(|| no_host_redis(image))?;
    build(image, &binary, &version).await
}

fn no_host_redis(image: &str) -> BackendError {
    BackendError::ImageBuild {
        image: image.into(),
        reason:
            "no redis-server on PATH to build it from: install it (apt-get install -y redis-server)"
                .into(),
    }
}

/// The image exists and was built from the host's redis-server (any image
/// will do when the host has none).
async fn image_is_current(host: Option<&(PathBuf, String)>) -> Result<bool, BackendError> {
    Ok(match (inspect_version_label(IMAGE).await?, host) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(built_from), Some((_, version))) if &built_from == version => true,
        (Some(built_from), Some((_, version))) => {
            tracing::info!("{IMAGE} was built from {built_from:?}, the host has {version:?}");
            false
        }
    })
}

/// Removes the lock file when the build is over.
struct LockFile(PathBuf);

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn lock_across_processes() -> Result<LockFile, BackendError> {
    use std::io::Write;
    let path = std::env::temp_dir().join(LOCK_FILE);
    let start = std::time::Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                let _ = write!(file, "{}", std::process::id());
                return Ok(LockFile(path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if lock_is_stale(&path) {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                if start.elapsed() > BUILD_TIMEOUT {
                    return Err(BackendError::ImageBuild {
                        image: IMAGE.into(),
                        reason: format!(
                            "{} has been held by another build for {:?}: remove it if no build is running",
                            path.display(),
                            start.elapsed()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(BackendError::io(format!("creating {}", path.display()), e)),
        }
    }
}

/// The holder is gone (no /proc entry) or the lock outlived any build.
fn lock_is_stale(path: &Path) -> bool {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    match std::fs::read_to_string(path).map(|text| text.trim().parse::<u32>()) {
        Ok(Ok(pid)) => !Path::new(&format!("/proc/{pid}")).exists() || age > BUILD_TIMEOUT,
        // Just created, pid not written yet; or unreadable for a long time.
        Ok(Err(_)) => age > Duration::from_secs(5),
        Err(_) => false,
    }
}

/// The version label of `image`, or None when the image does not exist.
async fn inspect_version_label(image: &str) -> Result<Option<String>, BackendError> {
    let docker = client().await?;
    match docker.inspect_image(image).await {
        Ok(image) => Ok(Some(
            image
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(VERSION_LABEL))
                .unwrap_or_default(),
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(BackendError::ImageBuild {
            image: image.into(),
            reason: format!("inspecting it: {e}"),
        }),
    }
}

/// The host's redis-server and its `--version` line.
async fn host_redis() -> Option<(PathBuf, String)> {
    let binary = find_on_path("redis-server")?;
    let out = tokio::process::Command::new(&binary)
        .arg("--version")
        .output()
        .await
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !version.is_empty()).then_some((binary, version))
}

async fn build(image: &str, binary: &Path, version: &str) -> Result<(), BackendError> {
    let libraries = libraries_of(binary).await?;
    let context = tempfile::Builder::new()
        .prefix("keyshift-redis-image-")
        .tempdir()
        .map_err(|e| BackendError::io("creating the image build context", e))?;
    let (root, bin) = (context.path().to_path_buf(), binary.to_path_buf());
    let dockerfile = labelled_dockerfile(version);
    tokio::task::spawn_blocking(move || prepare_context(&root, &bin, &libraries, &dockerfile))
        .await
        .expect("preparing the build context panicked")
        .map_err(|e| BackendError::io("preparing the image build context", e))?;

    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let buildable = GenericBuildableImage::new(name, tag)
        .with_dockerfile(context.path().join("Dockerfile"))
        .with_file(context.path().join("rootfs"), "rootfs");
    let reason = match tokio::time::timeout(BUILD_TIMEOUT, buildable.build_image()).await {
        Ok(Ok(_)) => {
            tracing::info!("built {image} from {}", binary.display());
            return Ok(());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no result within {BUILD_TIMEOUT:?}"),
    };
    // Another process may have built it meanwhile (a stale-lock race).
    if inspect_version_label(image).await?.as_deref() == Some(version) {
        return Ok(());
    }
    Err(BackendError::ImageBuild {
        image: image.into(),
        reason,
    })
}

/// The shipped Dockerfile plus the label naming the redis-server it holds.
fn labelled_dockerfile(version: &str) -> String {
    let quoted = version.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{DOCKERFILE}LABEL {VERSION_LABEL}=\"{quoted}\"\n")
}

/// Every library `ldd` lists for `binary` (none for a static one).
async fn libraries_of(binary: &Path) -> Result<Vec<PathBuf>, BackendError> {
    let failed = |reason: String| BackendError::Ldd {
        binary: binary.display().to_string(),
        reason,
    };
    let ldd = tokio::process::Command::new("ldd")
        .arg(binary)
        .output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&ldd.stdout);
    let stderr = String::from_utf8_lossy(&ldd.stderr);
    match parse_ldd(&stdout) {
        Ok(_) if stderr.contains("not a dynamic executable") => Ok(Vec::new()),
        Ok(libs) if ldd.status.success() => Ok(libs),
        Ok(_) if stderr.trim().is_empty() => Err(failed(stdout.trim().to_string())),
        Ok(_) => Err(failed(stderr.trim().to_string())),
        Err(reason) => Err(failed(reason)),
    }
}

/// The absolute paths of the libraries in `ldd` output, the dynamic loader
/// included; the vDSO (no file) is skipped, a static binary has none, and a
/// library that is "not found" is an error.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let candidate = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                target
            }
            None => line,
        };
        // "path (0x...)": drop the load address.
        let path = candidate.split(" (").next().unwrap_or("").trim();
        if path == "statically linked" {
            continue;
        }
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !paths.contains(&path) {
                paths.push(path);
            }
        } else if !path.is_empty()
            && !path.starts_with("linux-vdso")
            && !path.starts_with("linux-gate")
        {
            return Err(format!("unexpected ldd line {line:?}"));
        }
    }
    Ok(paths)
}

/// `absolute` re-rooted under `root` (`/lib/x.so` -> `root/lib/x.so`).
fn under_root(root: &Path, absolute: &Path) -> PathBuf {
    root.join(absolute.strip_prefix("/").unwrap_or(absolute))
}

/// Write the Dockerfile and rootfs/: the binary (symlinks followed, like
/// `cp -L`, named redis-server), each library at its path, empty /data, /tmp.
fn prepare_context(
    context: &Path,
    binary: &Path,
    libraries: &[PathBuf],
    dockerfile: &str,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = context.join("rootfs");
    let copy = |from: &Path, to: &Path| -> std::io::Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // fs::copy reads through symlinks and keeps the mode bits.
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|e| std::io::Error::new(e.kind(), format!("copying {}: {e}", from.display())))
    };
    copy(binary, &under_root(&rootfs, Path::new(BINARY_IN_IMAGE)))?;
    for library in libraries {
        copy(library, &under_root(&rootfs, library))?;
    }
    std::fs::create_dir_all(rootfs.join("data"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(context.join("Dockerfile"), dockerfile)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffd3b5f2000)
\tlibatomic.so.1 => /lib/x86_64-linux-gnu/libatomic.so.1 (0x00007fe689cdd000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fe6892a5000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fe689cfa000)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007fe689487000)
";

    #[test]
    fn ldd_lists_libraries_and_loader_but_not_the_vdso() {
        let paths = parse_ldd(LDD).unwrap();
        let expected: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libatomic.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn ldd_missing_library_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn ldd_static_binary_lists_nothing() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(parse_ldd("\tsomething odd\n").is_err());
        assert!(parse_ldd("").unwrap().is_empty());
    }

    #[test]
    fn lock_of_a_dead_process_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        std::fs::write(&lock, std::process::id().to_string()).unwrap();
        assert!(!lock_is_stale(&lock));
        std::fs::write(&lock, u32::MAX.to_string()).unwrap();
        assert!(lock_is_stale(&lock));
        std::fs::write(&lock, "").unwrap();
        assert!(
            !lock_is_stale(&lock),
            "a lock being written is not stale yet"
        );
        assert!(!lock_is_stale(&dir.path().join("gone")));
    }

    #[test]
    fn dockerfile_is_offline_buildable() {
        let first = DOCKERFILE.lines().next().unwrap();
        assert_eq!(first, "FROM scratch");
        assert!(!DOCKERFILE.to_ascii_lowercase().contains("# syntax="));
        assert!(DOCKERFILE.contains("COPY rootfs/ /"));
    }

    #[test]
    fn context_has_binary_libraries_and_empty_dirs() {
        let src = tempfile::tempdir().unwrap();
        let real = src.path().join("redis-check-rdb");
        std::fs::write(&real, b"binary").unwrap();
        let link = src.path().join("redis-server");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let lib = src.path().join("libx.so.1");
        std::fs::write(&lib, b"lib").unwrap();

        let ctx = tempfile::tempdir().unwrap();
        prepare_context(ctx.path(), &link, std::slice::from_ref(&lib), DOCKERFILE).unwrap();
        let rootfs = ctx.path().join("rootfs");
        let bin = under_root(&rootfs, Path::new(BINARY_IN_IMAGE));
        assert!(!std::fs::symlink_metadata(&bin)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&bin).unwrap(), b"binary");
        assert_eq!(std::fs::read(under_root(&rootfs, &lib)).unwrap(), b"lib");
        assert!(rootfs.join("data").is_dir() && rootfs.join("tmp").is_dir());
        assert!(ctx.path().join("Dockerfile").is_file());
    }
}
