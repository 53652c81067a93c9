//! `adaptserve eval` end to end: a CSV stream replayed through its own fresh server,
//! scored prequentially, and every bad input refused before a server starts.

use std::path::Path;

use crate::common::run_cli;

fn eval(args: &[&str]) -> (Option<i32>, String) {
    run_cli("eval", args)
}

/// Two Gaussian blobs in 3 features of very different scales, whose classes swap
/// sides at `drift`: learnable, and an abrupt drift to recover from.
fn write_blobs(path: &Path, n: usize, drift: usize) {
    let mut csv = String::from("f0,f1,f2,label\n");
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    for i in 0..n {
        let class = (i * 7 + i / 3) % 2;
        let side = if (class == 1) ^ (i >= drift) {
            1.0
        } else {
            -1.0
        };
        let x0 = side * 2.0 + noise();
        let x1 = 1000.0 * (side + noise());
        let x2 = 0.001 * noise();
        csv.push_str(&format!("{x0},{x1},{x2},{class}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn a_fresh_server_learns_a_stream_and_recovers_from_its_drift() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("blobs.csv");
    write_blobs(&csv, 2000, 1000);
    let out = dir.path().join("all");
    let (code, stderr) = eval(&[
        "--csv",
        csv.to_str().unwrap(),
        "--drift-at",
        "1000",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = results(&out);
    assert_eq!(r["stream"], "blobs");
    assert_eq!(r["samples"], 2000);
    assert_eq!(r["labels_sent"], 2000);
    assert_eq!(r["syncs"], 2000 / 32);
    assert_eq!(r["windows"].as_array().unwrap().len(), 2);
    // Separable blobs: well above chance overall and before the drift, and the
    // swap of sides is recovered from within the stream.
    let accuracy = r["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.85, "{accuracy}");
    assert!(r["windows"][0].as_f64().unwrap() > 0.85, "{r:#}");
    let recovery = &r["recoveries"][0];
    assert_eq!(recovery["position"], 1000);
    let samples = recovery["samples"].as_u64().expect("recovered");
    assert!((100..1000).contains(&samples), "{samples}");
    // Every prediction was scored, and the server learned from the labels.
    assert!(r["kappa"].as_f64().unwrap() > 0.7);
    assert!(r["server_status"]["model_version"].as_u64().unwrap() > 0);
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("<svg"), "the report has its plot");
    // The side swap set off the drift detector, and its marker reached the real
    // worker, whose replay buffer forgot the old sides.
    assert!(
        r["server_status"]["vote"]["drifts"].as_u64().unwrap() >= 1,
        "{r:#}"
    );
    let log = std::fs::read_to_string(out.join("server.log")).unwrap();
    assert!(
        log.contains("drift marker: the replay buffer forgets"),
        "{log}"
    );
    // predictions.csv holds every prediction beside its label, and agrees with the
    // accuracy reported.
    let rows = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let mut lines = rows.lines();
    assert_eq!(lines.next(), Some("predicted,label"));
    let pairs: Vec<(u32, u32)> = lines
        .map(|l| {
            let (p, y) = l.split_once(',').unwrap();
            (p.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(pairs.len(), 2000);
    let right = pairs.iter().filter(|(p, y)| p == y).count();
    assert!((right as f64 / 2000.0 - accuracy).abs() < 1e-9, "{right}");
    // The server reports each voter's accuracy and the precision of its
    // pseudo-labels, both measured on the labels it was sent.
    let status = &r["server_status"];
    for voter in ["model", "knn", "linear", "forest"] {
        let a = status["vote"]["accuracy"][voter].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{voter}: {status:#}");
    }
    // The blobs split on one feature's sign: the forest learns them, and earns a share.
    let forest = status["vote"]["accuracy"]["forest"].as_f64().unwrap();
    assert!(forest > 0.8, "{status:#}");
    assert!(status["vote"]["weights"]["forest"].as_f64().unwrap() >= 0.05);
    let precision = status["labels"]["pseudo_precision"].as_f64().unwrap();
    assert!(precision > 0.8, "{status:#}");
    assert!(status["labels"]["pseudo_scored"].as_u64().unwrap() > 0);
}

#[test]
fn one_label_in_ten_sends_a_tenth_of_the_labels_later() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("blobs.csv");
    write_blobs(&csv, 500, 1000);
    let out = dir.path().join("ten");
    let (code, stderr) = eval(&[
        "--csv",
        csv.to_str().unwrap(),
        "--label-every",
        "10",
        "--delay",
        "25",
        "--pseudo-labels",
        "off",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = results(&out);
    // Samples 0, 10, …, 470 have come back by the end (480 and 490 were still
    // 25 samples away).
    assert_eq!(r["labels_sent"], 48);
    assert_eq!(r["pseudo_labels"], false);
    assert_eq!(r["server_status"]["pseudo_labels"], 0);
    assert_eq!(r["recoveries"].as_array().unwrap().len(), 0);
}

#[test]
fn a_bad_stream_is_refused_with_its_line_before_any_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "f0,f1,label\n1,2,0\n1,NaN,1\n",
            "line 3: feature f1 is not finite",
        ),
        ("f0,f1,label\n1,2\n", "line 2: 2 fields, expected 3"),
        (
            "f0,f1,label\n1,2,-1\n",
            "line 2: the label must be an integer",
        ),
        ("a,b\n", "line 1: the header"),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let csv = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&csv, text).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let (code, stderr) = eval(&[
            "--csv",
            csv.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!out.join("server.log").exists(), "no server was started");
    }
    let (code, stderr) = eval(&["--csv", "/nonexistent/stream.csv"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot read /nonexistent/stream.csv"),
        "{stderr}"
    );
    let (code, stderr) = eval(&["--csv", "x.csv", "--label-every", "0"]);
    assert_eq!(code, Some(2), "clap refuses it: {stderr}");
}

#[tokio::test]
async fn a_url_server_whose_model_does_not_fit_the_stream_is_refused() {
    let server = crate::common::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("blobs.csv");
    write_blobs(&csv, 50, 1000);
    let url = server.url("");
    let csv_arg = csv.to_str().unwrap().to_string();
    let out = dir.path().join("out");
    let out_arg = out.to_str().unwrap().to_string();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        eval(&["--csv", &csv_arg, "--url", &url, "--output", &out_arg])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the server's model takes Some(16) features"),
        "{stderr}"
    );
    server.stop().await.unwrap();
}
