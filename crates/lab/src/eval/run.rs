//! The replay: one sample at a time, predict, then (maybe later) teach.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::stream::Stream;
use super::{EvalArgs, Switch};
use crate::simulate::target::Target;

/// What the replay observed.
#[derive(Debug)]
pub struct Outcome {
    /// One label per sample, predicted before its label was sent.
    pub predicted: Vec<u32>,
    pub classes: usize,
    pub labels_sent: u64,
    pub syncs: u64,
    pub seconds: f64,
    /// `/v1/status` at the end: λ, paths, updates, model version.
    pub status: Value,
}

/// Starts a fresh server (or reaches `--url`) and replays the stream through it.
pub async fn replay(args: &EvalArgs, stream: &Stream, out: &Path) -> anyhow::Result<Outcome> {
    let classes = stream.classes().max(2);
    let model_dir = tempfile::tempdir().context("cannot create a model dir")?;
    let mut target = match &args.url {
        Some(url) => Target::remote(url, args.admin_token.clone()),
        None => {
            crate::model::init_model(
                stream.dim,
                classes,
                &args.hidden,
                args.seed,
                model_dir.path(),
            )
            .context("cannot write the fresh model")?;
            Target::start(out, model_dir.path(), &server_toml(args)?, None).await?
        }
    };
    let result = drive(args, stream, classes, &target).await;
    target.stop().await;
    result
}

/// The settings of our own server: `--config`, with `--pseudo-labels` applied and a
/// k-NN timeout of 1 s unless set.
fn server_toml(args: &EvalArgs) -> anyhow::Result<String> {
    let mut table: toml::Table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            text.parse()
                .with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => toml::Table::new(),
    };
    let engine = table
        .entry("engine")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("[engine] in --config is not a table")?;
    engine.insert(
        "pseudo_labels".into(),
        toml::Value::Boolean(args.pseudo_labels == Switch::On),
    );
    // This measures learning, not latency: a search slowed by a busy machine must not
    // turn into a model-only answer and move the score. (`--config` may still set it.)
    engine
        .entry("knn_timeout_us")
        .or_insert(toml::Value::Integer(1_000_000));
    Ok(toml::to_string(&table)?)
}

async fn drive(
    args: &EvalArgs,
    stream: &Stream,
    classes: usize,
    target: &Target,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let base = &target.base;
    let status = wait_ready(&http, base).await?;
    let (dim, served_classes) = (status["input_dim"].as_u64(), status["num_classes"].as_u64());
    if dim != Some(stream.dim as u64) || served_classes.is_none_or(|k| (k as usize) < classes) {
        bail!(
            "the server's model takes {dim:?} features and {served_classes:?} classes; \
             the stream has {} features and {classes} classes",
            stream.dim
        );
    }
    let sync_url = format!("{base}/v1/admin/sync");
    let infer_url = format!("{base}/v1/infer");
    let feedback_url = format!("{base}/v1/feedback");
    let started = Instant::now();
    let mut predicted = Vec::with_capacity(stream.len());
    let mut waiting: VecDeque<(u64, u64, u32)> = VecDeque::new();
    let (mut labels_sent, mut syncs) = (0, 0);
    let report_every = (stream.len() / 10).max(1);
    for i in 0..stream.len() {
        let reply = post(&http, &infer_url, &json!({ "inputs": [stream.row(i)] })).await?;
        let p = &reply["predictions"][0];
        let (Some(label), Some(request_id)) = (p["label"].as_u64(), p["request_id"].as_u64())
        else {
            bail!("sample {i}: the server's answer has no label or request_id: {reply}");
        };
        predicted.push(label as u32);
        let i = i as u64;
        if i.is_multiple_of(args.label_every) {
            waiting.push_back((i, request_id, stream.labels[i as usize]));
        }
        while let Some(&(at, request_id, label)) = waiting.front() {
            if at + args.delay > i {
                break;
            }
            waiting.pop_front();
            let body = json!({ "request_id": request_id, "label": label });
            post(&http, &feedback_url, &body)
                .await
                .with_context(|| format!("the label of sample {at}"))?;
            labels_sent += 1;
        }
        if args.sync_every > 0 && (i + 1).is_multiple_of(args.sync_every) {
            sync(&http, &sync_url, target.token.as_deref()).await?;
            syncs += 1;
        }
        if (i as usize + 1).is_multiple_of(report_every) {
            let done = i as usize + 1;
            let correct = predicted
                .iter()
                .zip(&stream.labels)
                .filter(|(p, y)| p == y)
                .count();
            eprintln!(
                "{done}/{} samples, accuracy so far {:.4}, {:.1} s",
                stream.len(),
                correct as f64 / done as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let status = get(&http, &format!("{base}/v1/status")).await?;
    Ok(Outcome {
        predicted,
        classes,
        labels_sent,
        syncs,
        seconds: started.elapsed().as_secs_f64(),
        status,
    })
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            return get(http, &format!("{base}/v1/status")).await;
        }
        if Instant::now() > deadline {
            bail!("{base} never became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    send(http.get(url), "GET", url).await
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    send(http.post(url).json(body), "POST", url).await
}

async fn sync(http: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let token = token.context("the sync barrier needs --admin-token (or --sync-every 0)")?;
    send(http.post(url).bearer_auth(token), "POST", url)
        .await
        .map(drop)
}

/// Sends `request` and reads its JSON answer; a non-2xx status is an error that
/// carries the server's body.
async fn send(request: reqwest::RequestBuilder, method: &str, url: &str) -> anyhow::Result<Value> {
    let r = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = r.status();
    let text = r.text().await.with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url} answered non-JSON: {text}"))
}
