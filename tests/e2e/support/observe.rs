//! What the processes say of themselves: a process's `/metrics` (the one metrics
//! reader), and what the sample app counted of requests tagged for a test.

use super::*;

/// The value of metric `series` (a name, or a name with its labels as
/// printed: `name{label="v"}`) on the `/metrics` page of the process at
/// `base`; `None` when it does not answer or has no such series. The one
/// metrics reader of the harness.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    metric_with(&reqwest::Client::new(), base, series).await
}

/// [`metric`] with `client` (one that trusts a test CA, for HTTPS).
pub async fn metric_with(client: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let text = client.get(url).timeout(Duration::from_secs(5)).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// [`metric`] for a counter or gauge that must be there.
pub async fn counter_of(base: &str, series: &str) -> u64 {
    metric(base, series).await.unwrap_or_else(|| panic!("no {series} at {base}/metrics")) as u64
}

/// What the sample app behind `app` (an app URL through Meridian, without a
/// trailing `/`) has seen of requests tagged `x-sample-tag: tag`: (received, in flight).
pub async fn app_seen(client: &reqwest::Client, app: &str, tag: &str) -> Option<(u64, u64)> {
    let resp =
        client.get(format!("{app}/__sample/seen?tag={tag}")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    Some((v["received"].as_u64()?, v["in_flight"].as_u64()?))
}

/// Waits until the sample app behind `app` is answering every request tagged
/// `tag` that the test sent (`n`): they are in flight at the app.
pub async fn wait_in_flight_at_app(client: &reqwest::Client, app: &str, tag: &str, n: u64) {
    wait_for(Duration::from_secs(10), &format!("{n} requests tagged {tag} in flight at the app"), || async {
        app_seen(client, app, tag).await.filter(|(_, in_flight)| *in_flight >= n)
    })
    .await;
}
