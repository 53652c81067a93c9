//! Webhook payloads: `generic`, `slack`, `discord` and `alertmanager`.
//!
//! Each format is what the receiving tool documents for incoming webhooks, so an
//! alert lands as a readable message rather than raw JSON: Slack gets `text` (the
//! notification fallback) plus Block Kit `blocks`; Discord gets `content` plus one
//! embed, cut to Discord's limits (content 2000, title 256, description 4096, field
//! value 1024 characters, 25 fields); Alertmanager receivers get its webhook payload,
//! version 4.

use serde_json::{Value, json};

use super::{Alert, AlertStatus, Severity};
use crate::config::WebhookFormat;

/// The JSON body for `alert` in `format`.
pub fn payload(format: WebhookFormat, alert: &Alert) -> Value {
    match format {
        WebhookFormat::Generic => generic(alert),
        WebhookFormat::Slack => slack(alert),
        WebhookFormat::Discord => discord(alert),
        WebhookFormat::Alertmanager => alertmanager(alert),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn headline(alert: &Alert) -> String {
    let state = match alert.status {
        AlertStatus::Firing => alert.severity.as_str().to_uppercase(),
        AlertStatus::Resolved => "RESOLVED".to_string(),
    };
    format!("[{state}] adaptserve: {}", alert.name)
}

fn generic(alert: &Alert) -> Value {
    json!({
        "service": "adaptserve",
        "name": alert.name,
        "severity": alert.severity.as_str(),
        "status": alert.status.as_str(),
        "summary": alert.summary,
        "details": alert.details,
        "at": rfc3339(alert.at_ms),
    })
}

fn slack(alert: &Alert) -> Value {
    let emoji = match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => ":white_check_mark:",
        (_, Severity::Info) => ":information_source:",
        (_, Severity::Warning) => ":warning:",
        (_, Severity::Critical) => ":rotating_light:",
        (_, Severity::Emergency) => ":sos:",
    };
    let fields: Vec<Value> = alert
        .details
        .iter()
        .take(10) // Block Kit allows 10 fields per section.
        .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")}))
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&headline(alert), 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("{emoji} {}", alert.summary), 3000)}}),
    ];
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": rfc3339(alert.at_ms)}]}),
    );
    json!({"text": cut(&format!("{} — {}", headline(alert), alert.summary), 3000), "blocks": blocks})
}

fn discord(alert: &Alert) -> Value {
    let color = match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => 0x2ecc71,
        (_, Severity::Info) => 0x3498db,
        (_, Severity::Warning) => 0xf1c40f,
        (_, Severity::Critical) => 0xe67e22,
        (_, Severity::Emergency) => 0xe74c3c,
    };
    let fields: Vec<Value> = alert
        .details
        .iter()
        .take(25)
        .map(|(k, v)| json!({"name": cut(k, 256), "value": cut(v, 1024), "inline": true}))
        .collect();
    json!({
        "content": cut(&headline(alert), 2000),
        "embeds": [{
            "title": cut(&alert.name, 256),
            "description": cut(&alert.summary, 4096),
            "color": color,
            "timestamp": rfc3339(alert.at_ms),
            "fields": fields,
        }],
    })
}

fn alertmanager(alert: &Alert) -> Value {
    let starts = rfc3339(alert.started_ms);
    let ends = match alert.status {
        AlertStatus::Firing => "0001-01-01T00:00:00Z".to_string(),
        AlertStatus::Resolved => rfc3339(alert.at_ms),
    };
    let labels = json!({"alertname": alert.name, "severity": alert.severity.as_str(), "service": "adaptserve"});
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", alert.name),
        "truncatedAlerts": 0,
        "status": alert.status.as_str(),
        "receiver": "adaptserve",
        "groupLabels": {"alertname": alert.name},
        "commonLabels": labels,
        "commonAnnotations": {"summary": alert.summary},
        "externalURL": "",
        "alerts": [{
            "status": alert.status.as_str(),
            "labels": labels,
            "annotations": {"summary": alert.summary},
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fingerprint(&alert.name)),
        }],
    })
}

/// FNV-1a of the alert name: stable across restarts, as Alertmanager expects.
fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// At most `max` characters, with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(summary: &str, status: AlertStatus) -> Alert {
        let mut details = std::collections::BTreeMap::new();
        for i in 0..40 {
            details.insert(format!("k{i:02}"), "v".repeat(2000));
        }
        Alert {
            name: "worker_down".into(),
            severity: Severity::Critical,
            status,
            summary: summary.into(),
            details,
            at_ms: 1_700_000_000_123,
            started_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn discord_payloads_stay_within_discord_limits() {
        let p = payload(
            WebhookFormat::Discord,
            &alert(&"x".repeat(10_000), AlertStatus::Firing),
        );
        let e = &p["embeds"][0];
        assert!(p["content"].as_str().unwrap().chars().count() <= 2000);
        assert!(e["description"].as_str().unwrap().chars().count() <= 4096);
        assert!(e["title"].as_str().unwrap().chars().count() <= 256);
        let fields = e["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 25);
        assert!(
            fields
                .iter()
                .all(|f| f["value"].as_str().unwrap().chars().count() <= 1024)
        );
        assert_eq!(e["timestamp"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn slack_has_text_and_blocks_and_alertmanager_is_v4() {
        let p = payload(
            WebhookFormat::Slack,
            &alert("the worker died", AlertStatus::Firing),
        );
        assert!(
            p["text"]
                .as_str()
                .unwrap()
                .contains("[CRITICAL] adaptserve: worker_down")
        );
        assert_eq!(p["blocks"][0]["type"], "header");
        assert_eq!(p["blocks"][2]["fields"].as_array().unwrap().len(), 10);

        let p = payload(
            WebhookFormat::Alertmanager,
            &alert("back", AlertStatus::Resolved),
        );
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "resolved");
        let a = &p["alerts"][0];
        assert_eq!(a["labels"]["alertname"], "worker_down");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], "2023-11-14T22:13:20.123Z");

        let p = payload(WebhookFormat::Generic, &alert("s", AlertStatus::Firing));
        assert_eq!(
            (p["name"].as_str(), p["status"].as_str()),
            (Some("worker_down"), Some("firing"))
        );
    }
}
