//! The Kubernetes manifests (`deploy/kubernetes/`): every overlay renders with
//! `kubectl kustomize`, validates offline against Kubernetes' schemas
//! (`kubernetes-validate --strict`), and holds together: every flag and
//! `MERIDIAN_*` variable exists in `meridian <role> --help`, probes are on the
//! real endpoints, the grace period covers Meridian's drain, certificates
//! cover the hosts and are mounted where the flags say, the proxy API is open
//! only to proxies. `scripts/install-deps --tests` installs both tools.

use crate::support::{output_within, BIN};
use serde_yaml::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.31.0";

fn overlays() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/overlays");
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    all
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = output_within(cmd, Duration::from_secs(60), what);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn render(overlay: &Path) -> Vec<Value> {
    let yaml = run(Command::new("kubectl").arg("kustomize").arg(overlay), "kubectl kustomize");
    serde_yaml::Deserializer::from_str(&yaml).map(|d| Value::deserialize(d).unwrap()).collect()
}

use serde::Deserialize;

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap()
}

/// `labels` ⊆ the object's pod labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_mapping().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    let overlays = overlays();
    assert!(overlays.len() >= 3, "the coordinator and two regions: {overlays:?}");
    let dir = tempfile::tempdir().unwrap();
    for overlay in overlays {
        let yaml = run(Command::new("kubectl").arg("kustomize").arg(&overlay), "kubectl kustomize");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let mut validate = Command::new("python3");
        validate.args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION]).arg(&file);
        let report = run(&mut validate, &format!("kubernetes-validate of {}", overlay.display()));
        for line in report.lines().filter(|l| !l.starts_with("INFO")) {
            // cert-manager's Certificate is a custom resource: checked below instead.
            assert!(
                line.contains("kind Certificate with api version cert-manager.io/v1"),
                "{}: {line}",
                overlay.display()
            );
        }
        let docs = render(&overlay);
        let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed + kind(&docs, "Certificate").len(), docs.len(), "every object was validated:\n{report}");
    }
}

/// The flags `--help` defines: each option line's `--name` (after an
/// optional `-x, `), not every `--word` its prose mentions.
fn defined_flags(help: &str) -> std::collections::BTreeSet<&str> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = if line.starts_with('-') && !line.starts_with("--") { line.get(4..)? } else { line };
            let name = line.strip_prefix("--")?;
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(name.len());
            line.get(..end + 2)
        })
        .collect()
}

#[test]
fn help_defines_the_flags_of_its_option_lines_only() {
    let help =
        "Usage: meridian proxy [OPTIONS]\n\nOptions:\n      --relay-listen <ADDR>\n          Where agents attach \
                (see --relay-url for what they dial)\n  -h, --help\n          Print help\n      --tls\n";
    let flags: Vec<&str> = defined_flags(help).into_iter().collect();
    assert_eq!(flags, ["--help", "--relay-listen", "--tls"]);
}

#[test]
fn every_flag_and_variable_the_manifests_use_exists() {
    for overlay in overlays() {
        for deployment in kind(&render(&overlay), "Deployment") {
            for c in deployment["spec"]["template"]["spec"]["containers"].as_sequence().unwrap() {
                let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
                let role = args[0];
                let help = run(Command::new(BIN).args([role, "--help"]), &format!("meridian {role} --help"));
                let options = defined_flags(&help);
                for flag in args[1..].iter().filter(|a| a.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(options.contains(flag), "{}: meridian {role} has no {flag}", overlay.display());
                }
                let mut defined: Vec<&str> = Vec::new();
                for var in c["env"].as_sequence().unwrap() {
                    let name = s(&var["name"]);
                    if name.starts_with("MERIDIAN_") {
                        // `[env: NAME=]`, or `[env: NAME]` for one whose value --help hides.
                        let named = help.contains(&format!("[env: {name}="))
                            || help.contains(&format!("[env: {name}]"))
                            || help.contains(&format!("{name} in the environment"));
                        assert!(named, "{}: `meridian {role} --help` does not know {name}", overlay.display());
                    }
                    // A $(VAR) reference sees only the variables before it.
                    if let Some(value) = var["value"].as_str() {
                        for reference in value.split("$(").skip(1).map(|r| r.split(')').next().unwrap()) {
                            assert!(
                                defined.contains(&reference),
                                "{}: {name} refers to $({reference}) before it is defined",
                                overlay.display()
                            );
                        }
                    }
                    defined.push(name);
                }
            }
        }
    }
}

#[test]
fn the_manifests_hold_together() {
    let mut roles_seen = Vec::new();
    for overlay in overlays() {
        let docs = render(&overlay);
        let at = overlay.display().to_string();
        for deployment in kind(&docs, "Deployment") {
            let pod = &deployment["spec"]["template"];
            let c = &pod["spec"]["containers"][0];
            let role = s(&c["args"][0]);
            roles_seen.push(role.to_owned());
            let env: HashMap<&str, &Value> =
                c["env"].as_sequence().unwrap().iter().map(|v| (s(&v["name"]), &v["value"])).collect();
            let value =
                |name: &str| env.get(name).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{at}: no {name}"));

            // Probes on the real endpoints and a named port of the container.
            let ports: Vec<&str> = c["ports"].as_sequence().unwrap().iter().map(|p| s(&p["name"])).collect();
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                assert_eq!(s(&c[probe]["httpGet"]["path"]), path, "{at}: {probe}");
                assert!(ports.contains(&s(&c[probe]["httpGet"]["port"])), "{at}: {probe} port");
            }
            // The grace period covers the shutdown delay, the drain and deregistering.
            let drain =
                env.get("MERIDIAN_DRAIN_TIMEOUT").and_then(|v| v.as_str()).map_or(Duration::from_secs(15), duration);
            let needed = duration(value("MERIDIAN_SHUTDOWN_DELAY")) + drain + Duration::from_secs(5);
            let grace = Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap());
            assert!(grace > needed, "{at}: terminationGracePeriodSeconds {grace:?} ≤ {needed:?}");

            // TLS files come from the Certificate's Secret, which covers the hosts.
            let mounts: Vec<(&str, &str)> =
                c["volumeMounts"].as_sequence().unwrap().iter().map(|m| (s(&m["name"]), s(&m["mountPath"]))).collect();
            let cert_path = value("MERIDIAN_TLS_CERT");
            let (volume, _) = mounts.iter().find(|(_, path)| cert_path.starts_with(path)).expect("TLS cert mounted");
            let volume =
                pod["spec"]["volumes"].as_sequence().unwrap().iter().find(|v| s(&v["name"]) == *volume).unwrap();
            let secret = s(&volume["secret"]["secretName"]);
            let certs = kind(&docs, "Certificate");
            let cert = certs
                .iter()
                .find(|c| s(&c["spec"]["secretName"]) == secret)
                .unwrap_or_else(|| panic!("{at}: no Certificate writes {secret}"));
            let names: Vec<&str> = cert["spec"]["dnsNames"].as_sequence().unwrap().iter().map(s).collect();
            let host = url::Url::parse(value("MERIDIAN_ACCESS_URL")).unwrap().host_str().unwrap().to_owned();
            let wildcard = value("MERIDIAN_WILDCARD_ACCESS_URL").split(':').next().unwrap().to_owned();
            assert!(
                names.contains(&host.as_str()) && names.contains(&wildcard.as_str()),
                "{at}: {names:?} vs {host}, {wildcard}"
            );

            // A PodDisruptionBudget and a Service select these pods; the Service exposes the relay.
            let labels = &pod["metadata"]["labels"];
            assert!(
                kind(&docs, "PodDisruptionBudget")
                    .iter()
                    .any(|p| selects(&p["spec"]["selector"]["matchLabels"], labels)),
                "{at}: PDB"
            );
            let services = kind(&docs, "Service");
            let relay = services
                .iter()
                .filter(|svc| selects(&svc["spec"]["selector"], labels))
                .flat_map(|svc| svc["spec"]["ports"].as_sequence().unwrap())
                .any(|p| p["targetPort"] == "relay");
            assert!(relay && ports.contains(&"relay"), "{at}: the relay port is not exposed");

            match role {
                "coordinator" => {
                    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2, "{at}: 2+ coordinator replicas");
                    assert!(env.contains_key("MERIDIAN_POSTGRES_URL"), "{at}: external Postgres");
                    assert!(
                        c["env"].as_sequence().unwrap().iter().any(
                            |v| v["name"] == "MERIDIAN_POSTGRES_URL" && v["valueFrom"]["secretKeyRef"].is_mapping()
                        ),
                        "{at}: the Postgres URL comes from a Secret"
                    );
                    // Only proxies reach the internal (proxy API) port.
                    let internal: u16 = value("MERIDIAN_INTERNAL_LISTEN").rsplit(':').next().unwrap().parse().unwrap();
                    let policies = kind(&docs, "NetworkPolicy");
                    let policy = policies
                        .iter()
                        .find(|p| selects(&p["spec"]["podSelector"]["matchLabels"], labels))
                        .expect("NetworkPolicy");
                    for rule in policy["spec"]["ingress"].as_sequence().unwrap() {
                        let opens = rule["ports"]
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .any(|p| p["port"].as_u64() == Some(internal.into()));
                        if opens {
                            let from = rule["from"].as_sequence().expect("the proxy API rule names who may connect");
                            assert!(
                                from.iter()
                                    .all(|f| f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"),
                                "{at}: {rule:?}"
                            );
                        }
                    }
                }
                "proxy" => {
                    assert!(c["env"].as_sequence().unwrap().iter().any(|v| v["name"] == "MERIDIAN_PROXY_TOKEN" && v["valueFrom"]["secretKeyRef"].is_mapping()), "{at}: the proxy token comes from a Secret");
                    assert!(
                        value("MERIDIAN_COORDINATOR_URL").ends_with(":7081"),
                        "{at}: proxies use the internal listener"
                    );
                    let name = s(&deployment["metadata"]["name"]);
                    let hpas = kind(&docs, "HorizontalPodAutoscaler");
                    let hpa = hpas
                        .iter()
                        .find(|h| s(&h["spec"]["scaleTargetRef"]["name"]) == name)
                        .unwrap_or_else(|| panic!("{at}: no HPA for {name}"));
                    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
                }
                other => panic!("{at}: unexpected role {other}"),
            }
        }
    }
    roles_seen.sort();
    assert_eq!(roles_seen, ["coordinator", "proxy", "proxy"]);
}
