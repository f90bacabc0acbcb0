//! The scale-out event log: a NATS JetStream stream (file storage) with durable pull consumers.
//!
//! An append is a JetStream publish whose acknowledgement we await: the server has stored the
//! record when it answers. In-flight publishes are bounded; past the bound an append is refused
//! (`Overloaded`) so the gateway answers 503 instead of queueing without limit. Each consumer
//! group is a durable pull consumer with explicit acks; what a group does not acknowledge within
//! `ack_wait` is delivered again. Written for NATS 2.9 (Debian's): no 2.10+ consumer features.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;

use super::{AppendError, Delivery, EventLog, Subscription};

#[derive(Debug, Clone)]
pub struct Options {
    pub stream: String,
    pub subject: String,
    /// Publishes awaiting their acknowledgement before new appends are refused.
    pub max_in_flight: usize,
    /// How long a delivered, unacknowledged record waits before it is delivered again.
    pub ack_wait: Duration,
    /// How long a record is kept (replay horizon).
    pub max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            stream: "SWITCHYARD_EVENTS".into(),
            subject: "switchyard.events".into(),
            max_in_flight: 16_384,
            ack_wait: Duration::from_secs(60),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub struct NatsLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    options: Options,
    in_flight: Arc<Semaphore>,
}

impl NatsLog {
    pub async fn connect(url: &str, options: Options) -> anyhow::Result<NatsLog> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![options.subject.clone()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: options.max_age,
                ..Default::default()
            })
            .await
            .context(
                "cannot create the JetStream stream (is JetStream enabled: nats-server -js?)",
            )?;
        let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
        Ok(NatsLog {
            client,
            js,
            stream,
            options,
            in_flight,
        })
    }

    /// Records currently in the stream (for tests and tools).
    pub async fn count(&self) -> anyhow::Result<u64> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await?.state.messages)
    }

    /// Deletes the stream (tests use a stream of their own).
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.js.delete_stream(&self.options.stream).await?;
        Ok(())
    }
}

impl EventLog for NatsLog {
    fn append(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<(), AppendError>> {
        async move {
            let _permit = self
                .in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| AppendError::Overloaded)?;
            let ack = self
                .js
                .publish(self.options.subject.clone(), payload.into())
                .await
                .map_err(|e| AppendError::Unavailable(e.to_string()))?;
            ack.await
                .map_err(|e| AppendError::Unavailable(e.to_string()))?;
            Ok(())
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Subscription>>> {
        async move {
            let consumer: jetstream::consumer::Consumer<pull::Config> = self
                .stream
                .get_or_create_consumer(
                    group,
                    pull::Config {
                        durable_name: Some(group.to_owned()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: self.options.ack_wait,
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .with_context(|| format!("cannot create the JetStream consumer {group}"))?;
            let subscription: Box<dyn Subscription> = Box::new(NatsSubscription {
                client: self.client.clone(),
                consumer,
                pending: HashMap::new(),
            });
            Ok(subscription)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            // Appends await their acks, so nothing accepted is buffered here; flush what the
            // client still holds (acks of consumers).
            let _ = self.client.flush().await;
        }
        .boxed()
    }
}

struct NatsSubscription {
    client: async_nats::Client,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// Delivered, not yet acknowledged messages by stream sequence.
    pending: HashMap<u64, jetstream::Message>,
}

impl NatsSubscription {
    fn take(&mut self, message: jetstream::Message) -> anyhow::Result<Delivery> {
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let delivery = Delivery {
            sequence: info.stream_sequence,
            payload: message.payload.clone(),
            redeliveries: u64::try_from(info.delivered.saturating_sub(1)).unwrap_or(0),
        };
        self.pending.insert(info.stream_sequence, message);
        Ok(delivery)
    }
}

impl Subscription for NatsSubscription {
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Delivery>>> {
        async move {
            let mut out = Vec::new();
            // What is there now, without waiting…
            let mut messages = self
                .consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(self.take(message)?);
            }
            if !out.is_empty() || wait.is_zero() {
                return Ok(out);
            }
            // …or the first record that arrives within `wait`.
            let mut messages = self
                .consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(self.take(message)?);
            }
            Ok(out)
        }
        .boxed()
    }

    fn ack<'a>(&'a mut self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            for delivery in batch {
                if let Some(message) = self.pending.remove(&delivery.sequence) {
                    message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            self.client.flush().await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log on a stream of its own, when `SWITCHYARD_TEST_NATS_URL` is set.
    async fn test_log(ack_wait: Duration) -> Option<NatsLog> {
        let url = match std::env::var("SWITCHYARD_TEST_NATS_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("SWITCHYARD_REQUIRE_NATS").as_deref() != Ok("1"),
                    "SWITCHYARD_REQUIRE_NATS=1 but SWITCHYARD_TEST_NATS_URL is unset"
                );
                eprintln!("skipped: SWITCHYARD_TEST_NATS_URL is unset");
                return None;
            }
        };
        let name = format!("T{}", uuid::Uuid::now_v7().simple());
        let options = Options {
            stream: name.clone(),
            subject: format!("test.{name}"),
            ack_wait,
            ..Options::default()
        };
        Some(NatsLog::connect(&url, options).await.unwrap())
    }

    #[tokio::test]
    async fn acknowledged_appends_are_stored_and_read_in_order() {
        let Some(log) = test_log(Duration::from_secs(30)).await else {
            return;
        };
        let log = Arc::new(log);
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(i.to_string().into_bytes()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(log.count().await.unwrap(), 500);

        let mut sub = log.subscribe("analytics").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 500 {
            let batch = sub.next_batch(200, Duration::from_secs(2)).await.unwrap();
            assert!(!batch.is_empty(), "stalled after {}", seen.len());
            seen.extend(batch.iter().map(|d| d.sequence));
            sub.ack(&batch).await.unwrap();
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        log.delete().await.unwrap();
    }

    #[tokio::test]
    async fn unacknowledged_records_are_delivered_again() {
        let Some(log) = test_log(Duration::from_secs(1)).await else {
            return;
        };
        for i in 0..3u8 {
            log.append(vec![b'a' + i]).await.unwrap();
        }
        let mut sub = log.subscribe("g").await.unwrap();
        let first = sub.next_batch(10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(first.len(), 3);
        sub.ack(&first[..1]).await.unwrap();
        drop(sub);

        // After ack_wait the two unacknowledged records come back, marked as redelivered.
        let mut sub = log.subscribe("g").await.unwrap();
        let mut again: Vec<Delivery> = Vec::new();
        for _ in 0..10 {
            again.extend(sub.next_batch(10, Duration::from_secs(1)).await.unwrap());
            let mut seen: Vec<u64> = again.iter().map(|d| d.sequence).collect();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() >= 2 {
                break;
            }
        }
        let mut seen: Vec<u64> = again.iter().map(|d| d.sequence).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![2, 3], "{again:?}");
        // Each unacknowledged record comes back marked as a redelivery (a loaded machine may also
        // hand over extra copies; at least once allows that).
        for sequence in [2, 3] {
            assert!(
                again
                    .iter()
                    .any(|d| d.sequence == sequence && d.redeliveries >= 1),
                "{again:?}"
            );
        }
        log.delete().await.unwrap();
    }
}
