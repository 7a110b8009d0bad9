//! The demo's simulated geography (`deploy/local/topology.toml` explains the model).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The topology the demo uses without `--topology`.
pub const DEFAULT: &str = include_str!("../../../deploy/local/topology.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(rename = "region")]
    pub regions: Vec<RegionSpec>,
    #[serde(default)]
    pub agent: AgentSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    /// One-way latency added on every path into the region.
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The agent's preferred region, or `primary` (the coordinator's relay) [default: the first region].
    pub region: Option<String>,
}

/// Longest latency a topology may add (a typo like `60s` would stall the demo).
const MAX_LATENCY: Duration = Duration::from_secs(2);

impl Topology {
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (DEFAULT.to_owned(), "the default topology".to_owned()),
        };
        let t: Topology = toml::from_str(&text).with_context(|| format!("{origin} is not a valid topology"))?;
        t.validate().context(origin)?;
        Ok(t)
    }

    fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            bail!("a topology needs at least one [[region]]");
        }
        for (i, r) in self.regions.iter().enumerate() {
            meridian_regions::name::Name::parse(&r.name).map_err(|e| anyhow::anyhow!("region {:?}: {e}", r.name))?;
            if r.name == meridian_regions::PRIMARY_REGION || self.regions[..i].iter().any(|o| o.name == r.name) {
                bail!("region {:?} is reserved or listed twice", r.name);
            }
            if r.latency > MAX_LATENCY {
                bail!("region {:?}: latency {:?} is more than {MAX_LATENCY:?}", r.name, r.latency);
            }
        }
        if let Some(a) = &self.agent.region {
            // The primary (the coordinator's own relay) is where agents go by default.
            if a != meridian_regions::PRIMARY_REGION && !self.regions.iter().any(|r| &r.name == a) {
                bail!("[agent] region {a:?} is neither \"primary\" nor one of the regions");
            }
        }
        Ok(())
    }

    /// Only the regions named in `names` (in that order), with the latencies
    /// this topology gives them (none for regions it does not list).
    pub fn restricted_to(&self, names: &[String]) -> Result<Self> {
        let regions = names
            .iter()
            .map(|n| {
                self.regions
                    .iter()
                    .find(|r| &r.name == n)
                    .cloned()
                    .unwrap_or(RegionSpec { name: n.clone(), latency: Duration::ZERO })
            })
            .collect();
        let kept = |a: &String| names.contains(a) || a == meridian_regions::PRIMARY_REGION;
        let agent = AgentSpec { region: self.agent.region.clone().filter(kept) };
        let t = Topology { regions, agent };
        t.validate()?;
        Ok(t)
    }

    /// Where the demo's agent attaches first.
    pub fn agent_region(&self) -> &str {
        self.agent.region.as_deref().unwrap_or(&self.regions[0].name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_parses_and_bad_files_are_refused() {
        let t = Topology::load(None).unwrap();
        assert_eq!(t.regions.len(), 3);
        assert_eq!(t.agent_region(), "frankfurt");
        assert_eq!(t.regions[0].latency, Duration::from_millis(60));
        let only = t.restricted_to(&["sydney".into(), "tokyo".into()]).unwrap();
        assert_eq!((only.regions[1].latency, only.agent_region()), (Duration::ZERO, "sydney"));
        for bad in [
            "",
            "[[region]]\nname = \"primary\"",
            "[[region]]\nname = \"a\"\n[[region]]\nname = \"a\"",
            "[[region]]\nname = \"a\"\nlatency = \"60s\"",
            "[[region]]\nname = \"a\"\nlatency = \"soon\"",
            "[[region]]\nname = \"a\"\ncolour = \"red\"",
            "[[region]]\nname = \"a\"\n[agent]\nregion = \"b\"",
        ] {
            let parsed: Result<Topology> = toml::from_str(bad).map_err(anyhow::Error::from).and_then(|t: Topology| {
                t.validate()?;
                Ok(t)
            });
            assert!(parsed.is_err(), "accepted: {bad}");
        }
    }
}
