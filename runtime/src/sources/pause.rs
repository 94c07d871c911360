//! Freezing a flow: the pause switch of a pipeline, and the switches of every pipeline.
//!
//! An operator pauses a pipeline (`POST /admin/pipelines/<name>/pause`, `gridflow pipelines
//! pause`): its source stops taking inputs and the pipeline stays loaded. Each source kind
//! obeys its [`Pause`] in its own way:
//!
//! - `kafka`: the assigned partitions are paused in the consumer (librdkafka stops fetching
//!   them) while the consumer keeps polling, so it stays in its group with its assignment;
//!   partitions assigned while paused are paused as they arrive. Records already taken in
//!   finish normally and are committed.
//! - `http`, `soap`: every request to the pipeline's path is answered `503` with
//!   `Retry-After` and a problem+json body, before anything else is done with it.
//! - `file`: no new file is picked; the file being read is read to its end.
//!
//! The switch belongs to the pipeline's name, not to a version: a reload (a new version of the
//! file) keeps it, a rename in the file carries it over, and it is forgotten when the pipeline
//! stops (its file deleted). It lives in the process: a restart starts every pipeline running
//! (see docs/operations/pause.md for why).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

/// The pause switch of one pipeline: `Some(since)` while paused. Clones share the switch.
#[derive(Clone, Debug)]
pub struct Pause {
    state: Arc<watch::Sender<Option<SystemTime>>>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Pause {
    /// Since when the pipeline is paused (`None`: it runs).
    pub fn since(&self) -> Option<SystemTime> {
        *self.state.borrow()
    }

    /// True while the pipeline is paused.
    pub fn is_paused(&self) -> bool {
        self.since().is_some()
    }

    /// Pauses (`true`) or resumes (`false`) the pipeline; idempotent: pausing a paused
    /// pipeline keeps the time it was first paused. Returns true when the state changed.
    pub fn set(&self, paused: bool) -> bool {
        self.state.send_if_modified(|state| match (paused, *state) {
            (true, None) => {
                *state = Some(SystemTime::now());
                true
            }
            (false, Some(_)) => {
                *state = None;
                true
            }
            _ => false,
        })
    }

    /// A receiver that sees every change of the switch (for a source's loop).
    pub fn subscribe(&self) -> watch::Receiver<Option<SystemTime>> {
        self.state.subscribe()
    }

    /// Returns once the pipeline is not paused (at once when it runs).
    pub async fn resumed(&self) {
        let mut changes = self.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = changes.wait_for(Option::is_none).await;
    }
}

/// The pause switches of the pipelines an engine runs, by pipeline name.
#[derive(Default, Debug)]
pub struct Pauses {
    switches: Mutex<BTreeMap<String, Pause>>,
}

/// No pipeline of that name is running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no pipeline `{0}` is running")]
pub struct UnknownPipeline(pub String);

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Pause>> {
        self.switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The switch a new version of `name` (or, renamed, of `old`) gets: the running
    /// pipeline's, so that a reload keeps it paused; a new one for a new pipeline. Nothing is
    /// registered until [`Pauses::register`].
    pub fn for_version(&self, old: &str, name: &str) -> Pause {
        let switches = self.lock();
        switches
            .get(old)
            .or_else(|| switches.get(name))
            .cloned()
            .unwrap_or_default()
    }

    /// Registers `pause` as the switch of the running pipeline `name`, in place of `old`'s
    /// (the same name, or the one it had before a rename).
    pub fn register(&self, old: &str, name: &str, pause: Pause) {
        let mut switches = self.lock();
        if switches.remove(old).is_some() && old != name {
            // The old name's series would stay at 1 and page for a pipeline that is gone.
            crate::metrics::pipeline_paused(old, false);
        }
        crate::metrics::pipeline_paused(name, pause.is_paused());
        switches.insert(name.to_string(), pause);
    }

    /// Forgets the switch of `name`, a pipeline that stopped.
    pub fn forget(&self, name: &str) {
        if self.lock().remove(name).is_some() {
            crate::metrics::pipeline_paused(name, false);
        }
    }

    /// The switch of the running pipeline `name`.
    pub fn get(&self, name: &str) -> Result<Pause, UnknownPipeline> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownPipeline(name.to_string()))
    }

    /// Pauses (`true`) or resumes (`false`) the running pipeline `name`; returns the switch
    /// and whether the state changed. Logged and counted in `gridflow_pipeline_paused`.
    pub fn set(&self, name: &str, paused: bool) -> Result<(Pause, bool), UnknownPipeline> {
        let pause = self.get(name)?;
        let changed = pause.set(paused);
        crate::metrics::pipeline_paused(name, pause.is_paused());
        if changed {
            if paused {
                tracing::warn!(pipeline = %name, "Pipeline paused: its source takes no input until it is resumed.");
            } else {
                tracing::info!(pipeline = %name, "Pipeline resumed.");
            }
        }
        Ok((pause, changed))
    }

    /// Since when each paused pipeline is paused.
    pub fn paused(&self) -> BTreeMap<String, SystemTime> {
        self.lock()
            .iter()
            .filter_map(|(name, pause)| pause.since().map(|since| (name.clone(), since)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_is_idempotent_and_keeps_the_first_time() {
        let pause = Pause::default();
        assert!(!pause.is_paused());
        assert!(
            !pause.set(false),
            "resuming a running pipeline changes nothing"
        );
        assert!(pause.set(true));
        let since = pause.since().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!pause.set(true), "pausing twice changes nothing");
        assert_eq!(pause.since(), Some(since), "the first pause's time stays");
        assert!(pause.set(false));
        assert!(!pause.is_paused());
    }

    #[test]
    fn a_new_version_and_a_renamed_pipeline_keep_the_switch() {
        let pauses = Pauses::default();
        assert_eq!(
            pauses.set("a", true).unwrap_err(),
            UnknownPipeline("a".into())
        );
        let first = pauses.for_version("a", "a");
        pauses.register("a", "a", first);
        pauses.set("a", true).unwrap();
        // A reload: the new version gets the same, paused, switch.
        let reloaded = pauses.for_version("a", "a");
        assert!(reloaded.is_paused());
        pauses.register("a", "a", reloaded);
        // A rename: the switch moves to the new name.
        let renamed = pauses.for_version("a", "b");
        assert!(renamed.is_paused());
        pauses.register("a", "b", renamed);
        assert!(pauses.get("a").is_err());
        assert!(pauses.get("b").unwrap().is_paused());
        assert_eq!(
            pauses.paused().keys().collect::<Vec<_>>(),
            vec![&"b".to_string()]
        );
        // Stopped: forgotten; a pipeline of that name started later runs.
        pauses.forget("b");
        assert!(pauses.get("b").is_err());
        assert!(!pauses.for_version("b", "b").is_paused());
    }

    #[test]
    fn a_renamed_paused_pipeline_leaves_no_paused_series_behind() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let pauses = Pauses::default();
            pauses.register("a", "a", pauses.for_version("a", "a"));
            pauses.set("a", true).unwrap();
            pauses.register("a", "b", pauses.for_version("a", "b"));
        });
        let text = handle.render();
        assert!(
            text.contains("gridflow_pipeline_paused{pipeline=\"b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gridflow_pipeline_paused{pipeline=\"a\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn resumed_waits_for_the_resume() {
        let pause = Pause::default();
        pause.resumed().await;
        pause.set(true);
        let waiting = tokio::spawn({
            let pause = pause.clone();
            async move { pause.resumed().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        pause.set(false);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
