//! One lifecycle for every service: tasks started in named stages, a handle that waits for a
//! termination signal or a failed task, and an ordered shutdown in which each stage is told to
//! stop only after the stages before it have finished, and every task is joined.
//!
//! A server's stages are typically `serve` (the gRPC listener drains its requests), `records`
//! (the last prediction records are handed to the broker, the spool closed), then `metrics`
//! (the `/metrics` endpoint, last, so a scrape still sees the drain).

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Given to each task: resolves when the task's stage is told to stop.
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits until the stage is told to stop.
    pub async fn stopped(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// The underlying watch, for loops that select on `changed()`.
    pub fn into_receiver(self) -> watch::Receiver<bool> {
        self.0
    }

    /// Whether the stage has been told to stop.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// Whether a task ending by itself stops the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Runs for the life of the service (a listener, a pipeline): ending early stops it.
    Service,
    /// Helps for a while (creating a topic, a one-off check) and may end at any time.
    Helper,
}

struct Task {
    name: String,
    kind: Kind,
    handle: JoinHandle<Result<()>>,
}

struct Stage {
    name: &'static str,
    stop: watch::Sender<bool>,
    /// How long the stage's tasks may take to finish once told to stop; then they are aborted.
    grace: Option<Duration>,
    tasks: Vec<Task>,
}

/// The tasks of one service, in stages that stop in the order they were created.
pub struct Lifecycle {
    stages: Vec<Stage>,
    /// Names of service tasks that ended by themselves.
    ended_tx: mpsc::UnboundedSender<String>,
    ended: mpsc::UnboundedReceiver<String>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// No stages, no tasks.
    pub fn new() -> Self {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        Self { stages: Vec::new(), ended_tx, ended }
    }

    /// Declares a stage (or changes its grace period) without spawning anything; stages stop in
    /// the order they are first named.
    pub fn stage(&mut self, name: &'static str, grace: Option<Duration>) -> &mut Self {
        let stage = self.stage_mut(name);
        stage.grace = grace;
        self
    }

    fn stage_mut(&mut self, name: &'static str) -> &mut Stage {
        let at = match self.stages.iter().position(|s| s.name == name) {
            Some(at) => at,
            None => {
                self.stages.push(Stage { name, stop: watch::channel(false).0, grace: None, tasks: Vec::new() });
                self.stages.len() - 1
            }
        };
        &mut self.stages[at]
    }

    /// Starts a task that runs for the life of the service, in `stage`; if it ends by itself
    /// (an error, a closed listener), [`Lifecycle::run_until`] shuts the service down.
    pub fn spawn<F, Fut>(&mut self, stage: &'static str, name: impl Into<String>, task: F)
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.start(stage, name.into(), Kind::Service, task);
    }

    /// Starts a task that may end at any time (a best-effort check); joined at shutdown.
    pub fn spawn_helper<F, Fut>(&mut self, stage: &'static str, name: impl Into<String>, task: F)
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.start(stage, name.into(), Kind::Helper, task);
    }

    fn start<F, Fut>(&mut self, stage: &'static str, name: String, kind: Kind, task: F)
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let ended = self.ended_tx.clone();
        let stage = self.stage_mut(stage);
        let future = task(StopSignal(stage.stop.subscribe()));
        let reported = name.clone();
        let handle = tokio::spawn(async move {
            let result = future.await;
            if kind == Kind::Service {
                let _ = ended.send(reported);
            }
            result
        });
        stage.tasks.push(Task { name, kind, handle });
    }

    /// Runs until `stop` resolves or a service task ends by itself, then shuts down in order.
    /// A task that failed makes the result an error.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = stop => {}
            Some(name) = self.ended.recv() => tracing::warn!(task = name, "a service task ended; shutting down"),
        }
        self.shutdown().await
    }

    /// Tells each stage in turn to stop and joins its tasks (aborting those past the stage's
    /// grace period). Returns the first task error; the others are logged.
    pub async fn shutdown(self) -> Result<()> {
        let mut first_error = None;
        for stage in self.stages {
            let _ = stage.stop.send(true);
            for Task { name, kind, mut handle } in stage.tasks {
                let joined = match stage.grace {
                    None => (&mut handle).await,
                    Some(grace) => match tokio::time::timeout(grace, &mut handle).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            tracing::warn!(
                                stage = stage.name,
                                task = name,
                                ?grace,
                                "task still running after its grace period: aborted"
                            );
                            handle.abort();
                            continue;
                        }
                    },
                };
                let error = match joined {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.context(format!("{name} failed")),
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => anyhow!("{name} panicked: {e}"),
                };
                if kind == Kind::Helper {
                    tracing::warn!(task = name, error = %error, "helper task failed");
                } else if first_error.is_none() {
                    first_error = Some(error);
                } else {
                    tracing::error!(task = name, error = %error, "task failed");
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records when a task was told to stop and when it finished.
    fn recorder(
        log: &Arc<Mutex<Vec<String>>>,
        name: &'static str,
        work: Duration,
    ) -> impl Future<Output = Result<()>> + use<> {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(format!("{name} finishing"));
            tokio::time::sleep(work).await;
            log.lock().unwrap().push(format!("{name} done"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn stages_stop_in_order_each_after_the_previous_finished() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lifecycle = Lifecycle::new();
        for (stage, name, work) in [("serve", "grpc", 30), ("records", "drain", 10), ("metrics", "http", 0)] {
            let log = log.clone();
            lifecycle.spawn(stage, name, move |stop| async move {
                stop.stopped().await;
                recorder(&log, name, Duration::from_millis(work)).await
            });
        }
        lifecycle.shutdown().await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            ["grpc finishing", "grpc done", "drain finishing", "drain done", "http finishing", "http done"]
        );
    }

    #[tokio::test]
    async fn a_service_task_ending_by_itself_shuts_everything_down_with_its_error() {
        let mut lifecycle = Lifecycle::new();
        let drained = Arc::new(Mutex::new(false));
        lifecycle.spawn("serve", "grpc", |_stop| async { Err(anyhow!("address in use")) });
        let flag = drained.clone();
        lifecycle.spawn("records", "drain", move |stop| async move {
            stop.stopped().await;
            *flag.lock().unwrap() = true;
            Ok(())
        });
        let error = lifecycle.run_until(std::future::pending()).await.unwrap_err();
        assert_eq!(format!("{error:#}"), "grpc failed: address in use");
        assert!(*drained.lock().unwrap(), "later stages still drain");
    }

    #[tokio::test]
    async fn helpers_may_end_and_fail_without_stopping_the_service() {
        let mut lifecycle = Lifecycle::new();
        lifecycle.spawn_helper("serve", "create topics", |_stop| async { Err(anyhow!("broker down")) });
        lifecycle.spawn("serve", "grpc", |stop| async move {
            stop.stopped().await;
            Ok(())
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(lifecycle.run_until(async move {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!run.is_finished(), "a helper ending does not stop the service");
        tx.send(()).unwrap();
        run.await.unwrap().expect("a helper's failure is logged, not returned");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_past_its_grace_period_is_aborted() {
        let mut lifecycle = Lifecycle::new();
        lifecycle.stage("metrics", Some(Duration::from_secs(1)));
        lifecycle.spawn("metrics", "http", |_stop| std::future::pending::<Result<()>>());
        let started = tokio::time::Instant::now();
        lifecycle.shutdown().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
