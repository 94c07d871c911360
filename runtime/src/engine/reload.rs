//! Reload by diff: the pipelines directory is read again and compared with what runs.
//!
//! Unchanged pipelines (same name, same sha256) are not touched. A changed file is checked
//! first: invalid, the old version keeps running and the errors are kept for the admin API;
//! valid, [`Engine::replace`] swaps it in without losing a message. A deleted file's pipeline
//! drains and stops; a new file's starts. A change to `gridflow.toml` is reported as "restart
//! required" and not applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Engine;
use crate::config::pipeline::{load_all, pipeline_paths, version_of};
use crate::config::{interpolate, Diagnostic, PipelineFile};

/// What a reload did to one pipeline (or to one file that holds no running pipeline).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Same version: left running untouched.
    Unchanged,
    /// New file: started.
    Started,
    /// Changed file: the new version replaced the old one.
    Reloaded,
    /// File deleted (or the pipeline renamed): drained and stopped.
    Stopped,
    /// Invalid file or a version that could not be built: the old version (if any) keeps
    /// running.
    Failed,
}

/// The result of a reload for one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineResult {
    /// Pipeline name (for an invalid file that names none: the file stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What happened.
    pub action: Action,
    /// The version running now, if any.
    pub version: Option<String>,
    /// Why it failed (`path:line:col: error: ...` lines).
    pub errors: Vec<String>,
}

/// The result of a reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadReport {
    /// One entry per pipeline or file concerned.
    pub pipelines: Vec<PipelineResult>,
    /// `gridflow.toml` changed since start: a restart is needed to apply it.
    pub restart_required: bool,
}

/// One pipeline as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineView {
    /// Pipeline name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// sha256 of the running version's file (none when it is not running).
    pub version: Option<String>,
    /// When the running version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// `running`, `failed` (never started) or `stale` (running, but its file has errors).
    pub state: String,
    /// The last reload error, if the file has one now.
    pub last_error: Option<Vec<String>>,
}

/// Owns the engine and applies reloads.
pub struct Reloader {
    engine: Engine,
    dir: PathBuf,
    config: Option<(PathBuf, String)>,
    loaded_at: BTreeMap<String, SystemTime>,
    errors: BTreeMap<PathBuf, Vec<String>>,
    restart_required: bool,
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

fn file_version(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| version_of(&b))
}

impl Reloader {
    /// A reloader of `dir` over `engine`; `config` is the runtime file watched for changes.
    pub fn new(engine: Engine, dir: PathBuf, config: Option<PathBuf>) -> Self {
        let config = config.map(|p| {
            let v = file_version(&p).unwrap_or_default();
            (p, v)
        });
        Reloader {
            engine,
            dir,
            config,
            loaded_at: BTreeMap::new(),
            errors: BTreeMap::new(),
            restart_required: false,
        }
    }

    /// The engine, for the final shutdown.
    pub fn into_engine(self) -> Engine {
        self.engine
    }

    /// Reads the directory again and applies the difference.
    pub async fn reload(&mut self) -> ReloadReport {
        let mut results = Vec::new();
        if let Some((path, version)) = &self.config {
            if file_version(path).is_some_and(|v| &v != version) && !self.restart_required {
                self.restart_required = true;
                tracing::warn!(path = %path.display(), "Runtime configuration changed: restart required to apply it (pipelines still reload).");
                crate::metrics::reload("gridflow.toml", "restart_required");
            }
        }
        let paths = match pipeline_paths(&self.dir) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "Pipelines directory unreadable; nothing changed.");
                return ReloadReport {
                    pipelines: Vec::new(),
                    restart_required: self.restart_required,
                };
            }
        };
        // Files of running pipelines first: when two files claim one name or HTTP path, the
        // one already running keeps it and the newcomer gets the error.
        let running_paths: BTreeSet<PathBuf> = self
            .engine
            .names()
            .iter()
            .filter_map(|n| self.engine.path_of(n).map(Path::to_path_buf))
            .collect();
        let mut paths = paths;
        paths.sort_by_key(|p| !running_paths.contains(p));
        let (files, diagnostics) = load_all(&paths, &interpolate::from_env);
        let mut invalid: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
        for d in diagnostics {
            tracing::error!(path = %d.path.display(), line = d.line, column = d.column, hint = d.hint.as_deref().unwrap_or(""), error = %d.message, "Pipeline file rejected.");
            invalid.entry(d.path.clone()).or_default().push(d);
        }
        self.errors = invalid
            .iter()
            .map(|(p, ds)| (p.clone(), ds.iter().map(ToString::to_string).collect()))
            .collect();

        let mut desired: BTreeMap<String, PipelineFile> = files
            .into_iter()
            .map(|f| (f.config.name.clone(), f))
            .collect();
        let present: BTreeSet<PathBuf> = paths.iter().cloned().collect();

        // Stopped: running pipelines no valid file names any more, unless their own file is
        // still there but invalid (then the old version keeps running).
        for name in self.engine.names() {
            if desired.contains_key(&name) {
                continue;
            }
            let path = self
                .engine
                .path_of(&name)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            // Renamed inside its file: the new name takes over from the old one.
            let renamed = desired
                .values()
                .find(|f| f.path == path && self.engine.version_of(&f.config.name).is_none())
                .map(|f| f.config.name.clone());
            if let Some(file) = renamed.and_then(|new_name| desired.remove(&new_name)) {
                let result = self.apply(&name, file, Action::Reloaded).await;
                results.push(result);
                continue;
            }
            if present.contains(&path) && invalid.contains_key(&path) {
                tracing::warn!(pipeline = %name, path = %path.display(), "Pipeline file invalid; the running version keeps running.");
                results.push(self.failed(&name, &path));
                continue;
            }
            self.engine.stop(&name).await;
            self.loaded_at.remove(&name);
            crate::metrics::reload(&name, "stopped");
            results.push(PipelineResult {
                name,
                path,
                action: Action::Stopped,
                version: None,
                errors: Vec::new(),
            });
        }

        for (name, file) in desired {
            let path = file.path.clone();
            let version = file.version.clone();
            let action = match self.engine.version_of(&name) {
                Some(v) if v == version => {
                    // Moved as is: same pipeline, new place.
                    self.engine.set_path(&name, &path);
                    results.push(PipelineResult {
                        name,
                        path,
                        action: Action::Unchanged,
                        version: Some(version),
                        errors: Vec::new(),
                    });
                    continue;
                }
                Some(_) => Action::Reloaded,
                None => Action::Started,
            };
            let result = self.apply(&name, file, action).await;
            results.push(result);
        }

        // Invalid files that hold no running pipeline.
        for (path, errors) in &self.errors {
            if !results.iter().any(|r| &r.path == path) {
                crate::metrics::reload("", "failure");
                results.push(PipelineResult {
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path: path.clone(),
                    action: Action::Failed,
                    version: None,
                    errors: errors.clone(),
                });
            }
        }
        ReloadReport {
            pipelines: results,
            restart_required: self.restart_required,
        }
    }

    /// Swaps `file`'s version in for the running pipeline `old` (the same name, or the name
    /// the file had before a rename), or starts it; a failure keeps the old version running.
    async fn apply(&mut self, old: &str, file: PipelineFile, action: Action) -> PipelineResult {
        let (name, path, version) = (
            file.config.name.clone(),
            file.path.clone(),
            file.version.clone(),
        );
        match self.engine.replace_as(old, file).await {
            Ok(()) => {
                self.loaded_at.remove(old);
                self.loaded_at.insert(name.clone(), SystemTime::now());
                tracing::info!(pipeline = %name, previous = %old, version = %version, action = ?action, "Pipeline loaded.");
                crate::metrics::reload(&name, "success");
                PipelineResult {
                    name,
                    path,
                    action,
                    version: Some(version),
                    errors: Vec::new(),
                }
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %e, "Pipeline not loaded; the running version (if any) keeps running.");
                self.errors.insert(
                    path.clone(),
                    vec![format!("{}: error: {e}", path.display())],
                );
                self.failed(old, &path)
            }
        }
    }

    fn failed(&self, name: &str, path: &Path) -> PipelineResult {
        crate::metrics::reload(name, "failure");
        PipelineResult {
            name: name.to_string(),
            path: path.to_path_buf(),
            action: Action::Failed,
            version: self.engine.version_of(name).map(str::to_string),
            errors: self.errors.get(path).cloned().unwrap_or_default(),
        }
    }

    /// Every pipeline, running or not, with its last error.
    pub fn views(&self) -> Vec<PipelineView> {
        let mut views: Vec<PipelineView> = self
            .engine
            .status()
            .into_iter()
            .map(|s| {
                let last_error = self.errors.get(&s.path).cloned();
                PipelineView {
                    state: if !s.running {
                        "stopped".into()
                    } else if last_error.is_some() {
                        "stale".into()
                    } else {
                        "running".into()
                    },
                    loaded_at: self.loaded_at.get(&s.name).map(|t| rfc3339(*t)),
                    name: s.name,
                    path: s.path,
                    version: Some(s.version),
                    last_error,
                }
            })
            .collect();
        for (path, errors) in &self.errors {
            if !views.iter().any(|v| &v.path == path) {
                views.push(PipelineView {
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path: path.clone(),
                    version: None,
                    loaded_at: None,
                    state: "failed".into(),
                    last_error: Some(errors.clone()),
                });
            }
        }
        views
    }

    /// True once `gridflow.toml` changed since start.
    pub fn restart_required(&self) -> bool {
        self.restart_required
    }
}

/// A request to the reload task.
struct Request {
    reason: &'static str,
    reply: Option<tokio::sync::oneshot::Sender<ReloadReport>>,
}

/// What the admin API and the triggers hold of the reload task.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: tokio::sync::mpsc::Sender<Request>,
    views: std::sync::Arc<std::sync::Mutex<(Vec<PipelineView>, bool)>>,
    pauses: std::sync::Arc<crate::sources::Pauses>,
}

impl ReloadHandle {
    /// Reloads now and returns the report (`None` when the engine is stopping).
    pub async fn reload(&self, reason: &'static str) -> Option<ReloadReport> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request {
                reason,
                reply: Some(reply),
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Asks for a reload without waiting for it (a reload already queued covers this one).
    pub fn trigger(&self, reason: &'static str) {
        let _ = self.tx.try_send(Request {
            reason,
            reply: None,
        });
    }

    /// Every pipeline with its state, and whether a restart is required.
    pub fn views(&self) -> (Vec<PipelineView>, bool) {
        self.views.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The pause switches of the running pipelines. They are set at once, not through the
    /// reload queue: a freeze does not wait for a reload in progress.
    pub fn pauses(&self) -> &crate::sources::Pauses {
        &self.pauses
    }
}

/// Runs `reloader` in its own task until `shutdown`; the task gives the engine back.
pub fn spawn(
    mut reloader: Reloader,
    shutdown: tokio_util::sync::CancellationToken,
) -> (ReloadHandle, tokio::task::JoinHandle<Engine>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(16);
    let views = std::sync::Arc::new(std::sync::Mutex::new((
        reloader.views(),
        reloader.restart_required(),
    )));
    let handle = ReloadHandle {
        tx,
        views: std::sync::Arc::clone(&views),
        pauses: reloader.engine.pauses(),
    };
    let task = tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                request = rx.recv() => match request {
                    Some(r) => r,
                    None => break,
                },
            };
            tracing::info!(reason = request.reason, "Reloading pipelines.");
            let report = reloader.reload().await;
            if let Ok(mut v) = views.lock() {
                *v = (reloader.views(), reloader.restart_required());
            }
            if let Some(reply) = request.reply {
                let _ = reply.send(report);
            }
        }
        reloader.into_engine()
    });
    (handle, task)
}

/// Is `path` a file whose change calls for a reload: a visible `*.toml` of the pipelines
/// directory, or the runtime configuration file?
fn relevant(path: &Path, dir: &Path, config: Option<&Path>) -> bool {
    if config.is_some_and(|c| path.file_name() == c.file_name() && path.parent() == c.parent()) {
        return true;
    }
    // `..data` is how a Kubernetes ConfigMap volume swaps its files (a symlink flip).
    let visible_toml = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| (!n.starts_with('.') && n.ends_with(".toml")) || n == "..data");
    visible_toml && path.parent().is_some_and(|p| p == dir || p.ends_with(dir))
}

/// Watches `dir` (and the directory of `config`) and triggers a reload once changes have been
/// quiet for `debounce`: an editor's temporary file and rename, or a file written in several
/// writes, give one reload of the finished file. The watcher lives as long as the returned
/// value.
pub fn watch(
    dir: &Path,
    config: Option<&Path>,
    handle: ReloadHandle,
    debounce: std::time::Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let config = config.map(|c| {
        let parent = c
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf());
        parent.join(c.file_name().unwrap_or_default())
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (watch_dir, watch_config) = (dir.clone(), config.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error or a rescan (queue overflow) may hide a change: reload, the diff is cheap.
        let Ok(event) = event else {
            let _ = tx.send(());
            return;
        };
        if event.need_rescan() {
            let _ = tx.send(());
            return;
        }
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| relevant(p, &watch_dir, watch_config.as_deref()))
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    if let Some(parent) = config.as_deref().and_then(Path::parent) {
        if parent != dir {
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait for quiet.
            while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
            handle.trigger("file change");
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_toml_files_and_the_config_count() {
        let dir = Path::new("/srv/pipelines");
        let config = Some(Path::new("/srv/gridflow.toml"));
        assert!(relevant(Path::new("/srv/pipelines/a.toml"), dir, config));
        assert!(!relevant(
            Path::new("/srv/pipelines/.a.toml.swp"),
            dir,
            config
        ));
        assert!(!relevant(Path::new("/srv/pipelines/a.toml~"), dir, config));
        assert!(!relevant(
            Path::new("/srv/pipelines/a.toml.tmp"),
            dir,
            config
        ));
        assert!(!relevant(Path::new("/srv/README.md"), dir, config));
        assert!(relevant(Path::new("/srv/gridflow.toml"), dir, config));
        assert!(relevant(Path::new("/srv/pipelines/..data"), dir, config));
    }
}
