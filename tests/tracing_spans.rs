//! The library's tracing spans cover opening (recovery), spill batches and
//! the warm-up, so a subscriber can time and attribute them.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Records the name of every span opened, on any thread.
struct SpanNames(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for SpanNames {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(attrs.metadata().name().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_spill_batches_and_warm_up_run_in_spans() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(SpanNames(names.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fill_and_close(small(dir.path()), "a", 60).await;
    let cache = small(dir.path()).build().await.unwrap();
    wait_for_stats(&cache, "the warm-up", |s| s.recovery.warm_done).await;
    cache.close().await.unwrap();
    let names = names.lock().unwrap();
    for span in ["spillway.open", "spillway.spill_batch", "spillway.warm_up"] {
        assert!(
            names.iter().any(|n| n == span),
            "no {span} span in {names:?}"
        );
    }
}
