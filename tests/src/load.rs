//! Steady load through a proxy: requests at a fixed rate (bounded concurrency), each one's
//! upstream (`x-upstream`), status and latency recorded as the client saw them.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::client::Client;
use crate::upstream::X_UPSTREAM;

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// `x-upstream` of the answer, empty when there was none.
    pub upstream: String,
    /// 0 when the request failed without a response.
    pub status: u16,
    pub latency: Duration,
    /// When it was sent.
    pub sent: Instant,
}

/// What a [`Load`] sends.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests per second.
    pub rate: u32,
    /// URIs sent in turn (round robin), e.g. with different `delay_ms`.
    pub uris: Vec<String>,
    /// Headers on every request.
    pub headers: Vec<(String, String)>,
}

impl Plan {
    pub fn new(rate: u32, uri: &str) -> Self {
        Self { rate, uris: vec![uri.to_owned()], headers: Vec::new() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Load running in the background until stopped (or dropped).
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    /// When each request still in flight was sent.
    in_flight: Arc<Mutex<Vec<Instant>>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Requests in flight at most.
const CONCURRENCY: usize = 64;

impl Load {
    /// Start sending `plan` with `client`.
    pub fn start(client: Client, plan: Plan) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let recorded = samples.clone();
        let in_flight = Arc::new(Mutex::new(Vec::new()));
        let flying = in_flight.clone();
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(CONCURRENCY));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0usize;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let uri = plan.uris[n % plan.uris.len()].clone();
                n += 1;
                let mut req = Request::get(uri);
                for (k, v) in &plan.headers {
                    req = req.header(k, v);
                }
                let Ok(req) = req.body(Full::new(Bytes::new())) else { break };
                let (client, recorded, flying) = (client.clone(), recorded.clone(), flying.clone());
                let start = Instant::now();
                flying.lock().unwrap().push(start);
                tokio::spawn(async move {
                    let begun = Instant::now();
                    let sample = match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let upstream =
                                resp.headers().get(X_UPSTREAM).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                            let _ = resp.into_body().collect().await;
                            Sample { upstream, status, latency: begun.elapsed(), sent: start }
                        }
                        Err(_) => Sample { upstream: String::new(), status: 0, latency: begun.elapsed(), sent: start },
                    };
                    recorded.lock().unwrap().push(sample);
                    let mut flying = flying.lock().unwrap();
                    if let Some(i) = flying.iter().position(|t| *t == start) {
                        flying.swap_remove(i);
                    }
                    drop(flying);
                    drop(permit);
                });
            }
            // Let the requests in flight finish.
            let _ = permits.acquire_many(CONCURRENCY as u32).await;
        });
        Self { samples, in_flight, stop, task: Some(task) }
    }

    /// Every request finished so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Wait until `n` requests sent after `after` have finished, and return those.
    pub async fn sent_after(&self, after: Instant, n: usize) -> Vec<Sample> {
        crate::wait::wait_for(&format!("{n} requests sent after the mark to finish"), || async {
            let mut later: Vec<Sample> = self.samples().into_iter().filter(|s| s.sent >= after).collect();
            (later.len() >= n).then(|| {
                later.sort_by_key(|s| s.sent);
                later.truncate(n);
                later
            })
        })
        .await
    }

    /// Wait until every request sent before `mark` has finished (so that none of them can
    /// still reach an upstream).
    pub async fn finished_before(&self, mark: Instant) {
        crate::wait::wait_until("the requests sent before the mark to finish", || async {
            !self.in_flight.lock().unwrap().iter().any(|t| *t < mark)
        })
        .await;
    }

    /// Requests answered by `upstream` so far.
    pub fn count(&self, upstream: &str) -> usize {
        self.samples.lock().unwrap().iter().filter(|s| s.upstream == upstream).count()
    }

    /// Stop sending and wait for the requests in flight; returns every sample.
    pub async fn stop(mut self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = crate::wait::within("the load to stop", task).await;
        }
        self.samples()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
